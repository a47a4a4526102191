"""The stock Collector (otelcol-contrib) configurations in collector_config/, which
cannot run here: every component they name is defined and is one otelcol-contrib
has, every option is one its component's config struct reads, the settings their
comments mark LOSS are there, the evidence tier exports to the receiver its comment
and README start, the gateway routes by trace id, and the tail-sampling conditions
keep the traces of the spans spanproof selects by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanproof.exporter.config import DEFAULT_SELECT_ATTRIBUTES
from spanproof.exporter.otlp_server import DEFAULT_MAX_MESSAGE_BYTES
from spanproof.exporter.selection import EVIDENCE_ATTRIBUTE

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "collector_config"
GATEWAY = CONFIGS / "otelcol-gateway.yaml"
EVIDENCE = CONFIGS / "otelcol-evidence.yaml"
README = (ROOT / "README.md").read_text(encoding="utf-8")

KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")

# -- what otelcol-contrib has --------------------------------------------------------
#
# Component types by kind, with the Go module that provides each, as the builder
# manifest of the otelcol-contrib distribution lists them
# (open-telemetry/opentelemetry-collector-releases,
# distributions/otelcol-contrib/manifest.yaml, components at v0.136.0).  Only the
# types these configurations use or are likely to: add one here after checking the
# manifest, never to make a typo pass.
CONTRIB_TYPES: dict[str, dict[str, str]] = {
    "receivers": {
        "otlp": "go.opentelemetry.io/collector/receiver/otlpreceiver",
    },
    "processors": {
        "batch": "go.opentelemetry.io/collector/processor/batchprocessor",
        "memory_limiter": "go.opentelemetry.io/collector/processor/memorylimiterprocessor",
        "tail_sampling": "opentelemetry-collector-contrib/processor/tailsamplingprocessor",
        "groupbytrace": "opentelemetry-collector-contrib/processor/groupbytraceprocessor",
        "filter": "opentelemetry-collector-contrib/processor/filterprocessor",
    },
    "exporters": {
        "otlp": "go.opentelemetry.io/collector/exporter/otlpexporter",
        "otlphttp": "go.opentelemetry.io/collector/exporter/otlphttpexporter",
        "loadbalancing": "opentelemetry-collector-contrib/exporter/loadbalancingexporter",
        "debug": "go.opentelemetry.io/collector/exporter/debugexporter",
    },
    "extensions": {
        "health_check": "opentelemetry-collector-contrib/extension/healthcheckextension",
        "file_storage": "opentelemetry-collector-contrib/extension/storage/filestorage",
    },
    "connectors": {},
}

# -- the options their config structs read -------------------------------------------
#
# Nested mappings of option names (their `mapstructure` tags, squashed structs
# flattened), from the config structs of the components above: configgrpc's
# ClientConfig and ServerConfig, configtls, configretry.BackOffConfig,
# exporterhelper's QueueBatchConfig and TimeoutConfig, and each component's Config
# (cross-checked with the JSON schemas the releases repository generates from them,
# distributions/otelcol-contrib/_build/schemas/).  ANY: a value not looked into.
ANY: Any = None

TLS_CLIENT = dict.fromkeys(
    ["insecure", "insecure_skip_verify", "ca_file", "ca_pem", "cert_file", "cert_pem",
     "key_file", "key_pem", "min_version", "max_version", "server_name_override",
     "reload_interval", "include_system_ca_certs_pool", "cipher_suites",
     "curve_preferences", "tpm"], ANY)
TLS_SERVER = dict.fromkeys(
    ["cert_file", "cert_pem", "key_file", "key_pem", "ca_file", "ca_pem", "client_ca_file",
     "client_ca_file_reload", "min_version", "max_version", "reload_interval",
     "include_system_ca_certs_pool", "cipher_suites", "curve_preferences"], ANY)
RETRY = dict.fromkeys(
    ["enabled", "initial_interval", "max_interval", "max_elapsed_time", "multiplier",
     "randomization_factor"], ANY)
QUEUE = dict.fromkeys(
    ["enabled", "num_consumers", "queue_size", "storage", "sizer", "block_on_overflow",
     "blocking", "wait_for_result", "batch"], ANY)
GRPC_CLIENT = {
    **dict.fromkeys(["endpoint", "compression", "headers", "keepalive", "balancer_name",
                     "auth", "authority", "wait_for_ready", "read_buffer_size",
                     "write_buffer_size", "middlewares", "timeout"], ANY),
    "tls": TLS_CLIENT, "retry_on_failure": RETRY, "sending_queue": QUEUE,
}
GRPC_SERVER = {
    **dict.fromkeys(["endpoint", "transport", "max_recv_msg_size_mib",
                     "max_concurrent_streams", "read_buffer_size", "write_buffer_size",
                     "keepalive", "include_metadata", "auth", "middlewares"], ANY),
    "tls": TLS_SERVER,
}
HTTP_SERVER = {
    **dict.fromkeys(["endpoint", "cors", "auth", "max_request_body_size",
                     "include_metadata", "response_headers", "traces_url_path",
                     "metrics_url_path", "logs_url_path", "compression_algorithms",
                     "read_timeout", "read_header_timeout", "write_timeout", "idle_timeout",
                     "keep_alives_enabled", "middlewares"], ANY),
    "tls": TLS_SERVER,
}
# tail_sampling's policy types (PolicyType); each one's settings sit under its name.
POLICY_TYPES = ("always_sample", "latency", "numeric_attribute", "probabilistic",
                "status_code", "string_attribute", "rate_limiting", "span_count",
                "trace_state", "boolean_attribute", "ottl_condition", "bytes_limiting",
                "and", "composite", "drop", "not")
POLICY = {
    "name": ANY, "type": ANY,
    **dict.fromkeys(POLICY_TYPES, ANY),
    "ottl_condition": dict.fromkeys(["error_mode", "span", "spanevent"], ANY),
}
OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("receivers", "otlp"): {"protocols": {"grpc": GRPC_SERVER, "http": HTTP_SERVER}},
    ("processors", "memory_limiter"): dict.fromkeys(
        ["check_interval", "limit_mib", "spike_limit_mib", "limit_percentage",
         "spike_limit_percentage", "min_gc_interval_when_soft_limited",
         "min_gc_interval_when_hard_limited"], ANY),
    ("processors", "batch"): dict.fromkeys(
        ["timeout", "send_batch_size", "send_batch_max_size", "metadata_keys",
         "metadata_cardinality_limit"], ANY),
    ("processors", "tail_sampling"): {
        **dict.fromkeys(["decision_wait", "num_traces", "expected_new_traces_per_sec",
                         "sample_on_first_match", "drop_pending_traces_on_shutdown",
                         "block_on_overflow"], ANY),
        "decision_cache": dict.fromkeys(["sampled_cache_size", "non_sampled_cache_size"],
                                        ANY),
        "policies": [POLICY],
    },
    ("exporters", "otlp"): GRPC_CLIENT,
    ("exporters", "loadbalancing"): {
        "protocol": {"otlp": {k: v for k, v in GRPC_CLIENT.items() if k != "endpoint"}},
        "resolver": {
            "static": {"hostnames": ANY},
            "dns": dict.fromkeys(["hostname", "port", "interval", "timeout"], ANY),
            "k8s": dict.fromkeys(["service", "ports", "timeout", "return_hostnames"], ANY),
            "aws_cloud_map": ANY,
        },
        "routing_key": ANY, "routing_attributes": ANY,
        "timeout": ANY, "retry_on_failure": RETRY, "sending_queue": QUEUE,
    },
    ("extensions", "health_check"): {
        **dict.fromkeys(["endpoint", "path", "response_body", "check_collector_pipeline",
                         "cors", "auth", "include_metadata", "response_headers"], ANY),
        "tls": TLS_SERVER,
    },
    ("extensions", "file_storage"): dict.fromkeys(
        ["directory", "timeout", "compaction", "create_directory", "directory_permissions",
         "fsync", "recreate"], ANY),
}


def load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict), path
    return config


def component_type(name: str) -> str:
    """``otlp/spanproof`` -> ``otlp``."""
    return name.split("/", 1)[0]


def unknown_options(value: Any, schema: Any, where: str) -> list[str]:
    """The options in *value* that *schema* does not have, as dotted paths."""
    if schema is ANY or value is None:
        return []
    if isinstance(schema, list):
        assert isinstance(value, list), f"{where}: a list expected"
        return [bad for i, item in enumerate(value)
                for bad in unknown_options(item, schema[0], f"{where}[{i}]")]
    assert isinstance(value, dict), f"{where}: a mapping expected, got {value!r}"
    found = []
    for key, item in value.items():
        if key not in schema:
            found.append(f"{where}.{key}")
        else:
            found.extend(unknown_options(item, schema[key], f"{where}.{key}"))
    return found


def the(config: dict[str, Any], kind: str, type_: str) -> tuple[str, dict[str, Any]]:
    """The one component of *type_* among *kind* (its name and settings)."""
    found = [(name, settings or {}) for name, settings in config[kind].items()
             if component_type(name) == type_]
    assert len(found) == 1, f"one {type_} {kind[:-1]} expected, found {found}"
    return found[0]


both = pytest.mark.parametrize("path", [GATEWAY, EVIDENCE], ids=lambda p: p.name)


# -- structure ------------------------------------------------------------------------


@both
def test_every_component_a_pipeline_or_the_service_names_is_defined(path: Path) -> None:
    config = load(path)
    service = config["service"]
    named = {("extensions", name) for name in service.get("extensions", [])}
    assert service["pipelines"], "no pipeline"
    for pipeline, parts in service["pipelines"].items():
        assert component_type(pipeline) in ("traces", "metrics", "logs"), pipeline
        assert parts.get("receivers") and parts.get("exporters"), pipeline
        named |= {(kind, name) for kind in ("receivers", "processors", "exporters")
                  for name in parts.get(kind, [])}
    undefined = sorted(f"{kind}: {name}" for kind, name in named
                       if name not in (config.get(kind) or {}))
    assert not undefined, f"named but not defined: {undefined}"
    unused = sorted(f"{kind}: {name}" for kind in KINDS for name in config.get(kind) or {}
                    if (kind, name) not in named)
    assert not unused, f"defined but never used: {unused}"


@both
def test_every_component_type_is_one_otelcol_contrib_has(path: Path) -> None:
    config = load(path)
    assert set(config) <= {*KINDS, "service"}, sorted(config)
    unknown = sorted(f"{kind}: {name}" for kind in KINDS for name in config.get(kind) or {}
                     if component_type(name) not in CONTRIB_TYPES[kind])
    assert not unknown, f"not otelcol-contrib component types: {unknown}"


@both
def test_every_option_is_one_its_component_reads(path: Path) -> None:
    config = load(path)
    unknown = []
    for kind in KINDS:
        for name, settings in (config.get(kind) or {}).items():
            schema = OPTIONS[kind, component_type(name)]
            unknown += unknown_options(settings, schema, f"{kind}.{name}")
            if (kind, component_type(name)) == ("processors", "tail_sampling"):
                for policy in settings["policies"]:
                    assert policy["type"] in POLICY_TYPES, policy["type"]
    assert not unknown, f"options the components do not have: {unknown}"


@both
def test_every_storage_a_queue_names_is_a_started_file_storage(path: Path) -> None:
    config = load(path)
    started = config["service"].get("extensions", [])
    for kind_settings in config["exporters"].values():
        for queue in _queues(kind_settings or {}):
            storage = queue.get("storage")
            if storage is not None:
                assert component_type(storage) == "file_storage", storage
                assert storage in started, f"{storage} is not in service.extensions"


def _queues(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sending_queue in an exporter's settings (a load balancer's own and its
    per-backend exporter's)."""
    found = [settings["sending_queue"]] if "sending_queue" in settings else []
    backend = (settings.get("protocol") or {}).get("otlp")
    return found + (_queues(backend) if backend else [])


# -- loss -----------------------------------------------------------------------------

# What each `# LOSS:` comment stands above: the option it marks.
LOSS_MARKED = {"file_storage/spanproof_queue", "decision_cache", "retry_on_failure",
               "sending_queue", "fsync"}


@both
def test_every_loss_comment_marks_one_of_the_settings_that_prevent_loss(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "# LOSS:" in line and line.lstrip().startswith("#"):
            rest = [x for x in lines[i + 1:] if x.strip() and not x.lstrip().startswith("#")]
            key = rest[0].strip().split(":", 1)[0]
            assert key in LOSS_MARKED, f"line {i + 1}: LOSS marks {key!r}"


@both
def test_memory_limiter_comes_first_in_every_pipeline(path: Path) -> None:
    for pipeline, parts in load(path)["service"]["pipelines"].items():
        processors = parts.get("processors") or []
        assert processors and component_type(processors[0]) == "memory_limiter", pipeline


def test_evidence_tier_keeps_the_settings_its_comments_mark_loss() -> None:
    config = load(EVIDENCE)
    text = EVIDENCE.read_text(encoding="utf-8")
    assert text.count("# LOSS:") == 5
    _, exporter = the(config, "exporters", "otlp")
    retry = exporter["retry_on_failure"]
    assert retry["enabled"] is True and retry["max_elapsed_time"] == 0  # never give up
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    storage = queue["storage"]
    assert storage in config["extensions"] and storage in config["service"]["extensions"]
    assert config["extensions"][storage]["directory"]
    # Made durable as it is written: what the collector acknowledged survives a crash.
    assert config["extensions"][storage]["fsync"] is True
    _, sampling = the(config, "processors", "tail_sampling")
    # Upstream: at least an order of magnitude more than num_traces to be effective.
    assert sampling["decision_cache"]["sampled_cache_size"] >= 10 * sampling["num_traces"]


@both
def test_collector_messages_fit_the_receivers_default_message_limit(path: Path) -> None:
    config = load(path)
    for name, receiver in config["receivers"].items():
        grpc = receiver["protocols"]["grpc"]
        assert grpc["max_recv_msg_size_mib"] * 2**20 <= DEFAULT_MAX_MESSAGE_BYTES, name


# -- what README and the comments say ---------------------------------------------------


def _receiver_grpc(command: str) -> str:
    match = re.search(r"--grpc (\S+)", command)
    assert match, command
    return match.group(1)


def test_evidence_exporter_sends_to_the_receiver_its_comment_and_readme_start() -> None:
    config = load(EVIDENCE)
    _, exporter = the(config, "exporters", "otlp")
    endpoint = exporter["endpoint"]
    commented = re.search(r"`(spanproof receiver [^`]*)`",
                          EVIDENCE.read_text(encoding="utf-8").replace("\n#", ""))
    assert commented, "no receiver command in otelcol-evidence.yaml's comments"
    assert _receiver_grpc(commented.group(1)) == endpoint
    assert "--no-http" in commented.group(1)
    # README's receiver command under "Behind an OpenTelemetry Collector", and its
    # description of the file.
    section = README[README.index("## Behind an OpenTelemetry Collector"):]
    first = re.search(r"spanproof receiver [^\n]*", section)
    assert first and _receiver_grpc(first.group(0)) == endpoint
    described = section[section.index("- `otelcol-evidence.yaml`"):]
    assert f"(`{endpoint}`)" in described.split("\n\n", 1)[0]
    # Plain text only to a receiver on loopback.
    assert endpoint.startswith("127.0.0.1:")
    assert exporter["tls"] == {"insecure": True}


def test_gateway_routes_every_span_of_a_trace_to_one_backend() -> None:
    config = load(GATEWAY)
    name, balancer = the(config, "exporters", "loadbalancing")
    assert balancer["routing_key"] == "traceID"
    assert "routing_attributes" not in balancer
    for pipeline, parts in config["service"]["pipelines"].items():
        assert parts["exporters"] == [name], pipeline  # nothing bypasses it
    resolver = balancer["resolver"]
    assert resolver.get("static", {}).get("hostnames") or resolver.get("dns")


def test_tail_sampling_conditions_name_the_attributes_spanproof_selects_by_default() -> None:
    _, sampling = the(load(EVIDENCE), "processors", "tail_sampling")
    policies = [p for p in sampling["policies"] if p["type"] == "ottl_condition"]
    assert len(policies) == 1 and len(sampling["policies"]) == 1
    condition = policies[0]["ottl_condition"]
    assert condition["error_mode"] == "ignore"
    marker, keys, other = [], [], []
    for line in condition["span"]:
        if m := re.fullmatch(r'attributes\["([^"]+)"\] == true', line):
            marker.append(m.group(1))
        elif m := re.fullmatch(r'attributes\["([^"]+)"\] != nil', line):
            keys.append(m.group(1))
        else:
            other.append(line)
    assert not other, other
    assert marker == [EVIDENCE_ATTRIBUTE]
    assert sorted(keys) == sorted(DEFAULT_SELECT_ATTRIBUTES)


def test_gateway_retries_and_queues_in_the_load_balancer_not_per_backend() -> None:
    # Per backend, a queue acknowledged a batch once it was in memory there, lost it
    # when the resolver dropped that backend, and could not be made persistent (all
    # backends' copies open one storage: opentelemetry-collector-contrib#16826).
    _, balancer = the(load(GATEWAY), "exporters", "loadbalancing")
    retry = balancer["retry_on_failure"]
    assert retry["enabled"] is True and retry["max_elapsed_time"] == 0
    assert balancer["sending_queue"]["enabled"] is True
    backend = balancer["protocol"]["otlp"]
    assert backend["sending_queue"] == {"enabled": False}
    assert backend["retry_on_failure"] == {"enabled": False}
    # The load balancer's attempt outlasts one backend's.
    assert _seconds(balancer["timeout"]) > _seconds(backend["timeout"])
    # Its comment's advice for a persistent queue is about the queue it sits above.
    text = GATEWAY.read_text(encoding="utf-8")
    advice = text.index("`storage: file_storage/...` here")
    assert text.index("    sending_queue:\n", advice) < text.index("    protocol:\n")


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]
