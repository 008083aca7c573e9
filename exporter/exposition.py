"""Encoding /metrics: the Prometheus text format, fast.

prometheus_client's encoder re-validates and re-escapes every label of
every sample (about 7 µs a sample); at 1,000 monitors that is 50,000
samples and most of a scrape's time. Our label sets repeat (every series of
a monitor shares its labels), so this encoder renders each distinct
label pair once and reuses it.

Negotiation follows client_golang's default: the text format (0.0.4)
whenever the client accepts it, which Prometheus always does; OpenMetrics
only for a client that accepts nothing else, via prometheus_client.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def render_text(families: Iterable[Metric]) -> bytes:
    """Encode families in the Prometheus text format 0.0.4."""
    pairs: dict[tuple[str, str], str] = {}
    out: list[str] = []
    append = out.append
    for family in families:
        name = family.name
        typ = family.type
        if typ == "counter":
            name += "_total"
        elif typ in ("info", "stateset"):
            typ = "gauge"
        elif typ not in ("gauge", "histogram", "summary"):
            typ = "untyped"
        append(f"# HELP {name} {_escape_help(family.documentation)}\n# TYPE {name} {typ}\n")
        created = family.name + "_created"
        for sample in family.samples:
            if sample.name == created:
                continue  # OpenMetrics-only; the text format has no place for it
            if sample.labels:
                rendered = []
                for pair in sample.labels.items():
                    text = pairs.get(pair)
                    if text is None:
                        text = pairs[pair] = f'{pair[0]}="{_escape_value(pair[1])}"'
                    rendered.append(text)
                append(f"{sample.name}{{{','.join(rendered)}}} {floatToGoString(sample.value)}\n")
            else:
                append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(out).encode()


class _Families:
    def __init__(self, families: Iterable[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def encoder_for(accept: str) -> tuple[Callable[[Iterable[Metric]], bytes], str]:
    """Pick the encoding for an Accept header: (encode(families), content type)."""
    wants_text = not accept or any(
        part.split(";")[0].strip() in ("text/plain", "*/*", "text/*") for part in accept.split(",")
    )
    if wants_text:
        return render_text, TEXT_CONTENT_TYPE
    encode, content_type = choose_encoder(accept)
    return (lambda families: encode(_Families(families))), content_type
