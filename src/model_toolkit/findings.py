"""What a report says beyond the header, gathered in one place for every front end.

The CLI's `inspect` and the web UI's reports show the same facts: hints from names and
metadata, and, when tensor data may be read, the metric and the components it names, broken
CLIP position ids, LoRA alphas and class fingerprints.
"""

from __future__ import annotations

from typing import Any

from .analysis import Analysis
from .hints import data_hints, header_hints
from .report import Findings


def gather_findings(
    analysis: Analysis, metadata: dict[str, Any], read_data: bool = True
) -> Findings:
    """The findings for a report; with `read_data` False, only those from the header (no
    numpy, milliseconds)."""
    findings = Findings(hints=header_hints(analysis, metadata))
    if not read_data:
        return findings
    from .fingerprints import class_fingerprints
    from .metric import compute_metric, known_components
    from .readings import broken_position_ids, lora_alphas

    findings.hints += data_hints(analysis)
    findings.metric = compute_metric(analysis)
    findings.known = known_components(findings.metric)
    findings.broken_position_ids = broken_position_ids(analysis)
    findings.lora_alphas = lora_alphas(analysis)
    findings.fingerprints = class_fingerprints(analysis)
    return findings
