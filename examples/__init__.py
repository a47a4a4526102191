"""Runnable example workflows, instrumented with the OpenTelemetry API only.

``spanproof.examples.support_agent`` is the support-case agent that
``spanproof demo`` traces, certifies and verifies.
"""
