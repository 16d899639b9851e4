"""The model card: ``model-card.json`` and its rendering ``model-card.md``, in every artifact directory.

Everything in the card is derived from files of the same directory — ``model_meta.json`` and the three
reports — except what only the people who trained the model can say, which comes from the training config's
``card`` section: the intended use, uses that are out of scope, and the limitations. The card names the
sha256 of each file it was derived from, and ``verify-artifacts`` rebuilds it from those files: a card that
says something its sources do not is caught, as is a Markdown file that is not the rendering of the JSON.

Both files are written before the manifest, so the manifest lists them and a signature covers them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelwarden.artifacts import MODEL_META_FILENAME, ModelMeta, sha256_file
from modelwarden.training.reports import (
    BIAS_REPORT,
    EVALUATION_REPORT,
    REPRODUCIBILITY_REPORT,
    BiasReport,
    EvaluationReport,
    ReproducibilityReport,
    canonical_json,
)

CARD_JSON: Final = "model-card.json"
CARD_MARKDOWN: Final = "model-card.md"
CARD_FILES: Final = (CARD_JSON, CARD_MARKDOWN)
CARD_SCHEMA: Final = "modelwarden.io/model-card/v1"
CARD_SOURCES: Final = (MODEL_META_FILENAME, REPRODUCIBILITY_REPORT, BIAS_REPORT, EVALUATION_REPORT)
NOT_STATED: Final = "not stated in the training config"


class CardError(ValueError):
    """The card's sources cannot be read, or the card cannot be built from them."""


class CardStatement(BaseModel):
    """What the model's owners state about it (the training config's ``card`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intended_use: str | None = Field(default=None, min_length=1)
    out_of_scope_uses: tuple[str, ...] = ()
    limitations: tuple[str, ...] = ()


def _read(directory: Path, name: str) -> Any:
    try:
        return json.loads((directory / name).read_bytes())
    except FileNotFoundError:
        raise CardError(f"{name} is missing") from None
    except (OSError, ValueError) as e:
        raise CardError(f"{name} is unreadable: {e}") from e


def build_model_card(directory: str | Path, statement: CardStatement) -> dict[str, Any]:
    """The card of the artifact in ``directory`` (its meta and reports must already be there)."""
    directory = Path(directory)
    try:
        meta = ModelMeta.model_validate(_read(directory, MODEL_META_FILENAME))
        repro = ReproducibilityReport.model_validate(_read(directory, REPRODUCIBILITY_REPORT))
        bias = BiasReport.model_validate(_read(directory, BIAS_REPORT))
        evaluation = EvaluationReport.model_validate(_read(directory, EVALUATION_REPORT))
    except ValidationError as e:
        raise CardError(f"a source of the model card does not match its schema: {e.errors()[0]['msg']}") from e
    return {
        "schema": CARD_SCHEMA,
        "model": repro.model, "version": repro.version, "task": evaluation.task, "estimator": evaluation.estimator,
        "trained_at": repro.trained_at.isoformat(),
        "intended_use": statement.intended_use, "out_of_scope_uses": list(statement.out_of_scope_uses),
        "limitations": list(statement.limitations),
        "features": {"contract": meta.feature_contract, "n_features": meta.n_features, "names": list(meta.features)},
        "training_data": {
            "source": repro.data.source, "sha256": repro.data.sha256, "rows": repro.data.rows,
            "feature_store_sha256": repro.feature_store.sha256, "feature_store_ref": repro.feature_store.ref,
            "config_sha256": repro.config_sha256, "pipeline_commit": repro.pipeline_commit, "seed": repro.seed,
            "libraries": dict(sorted(repro.libraries.items())),
        },
        "evaluation": {"status": evaluation.status, "metrics": evaluation.metrics, "acceptance": evaluation.acceptance,
                       "backtest": evaluation.backtest, "failures": evaluation.failures},
        "bias": {"status": bias.status, "protected_attribute": bias.protected_attribute,
                 "evaluated_on": bias.evaluated_on, "thresholds": bias.thresholds,
                 "demographic_parity_difference": bias.demographic_parity_difference,
                 "demographic_parity_ratio": bias.demographic_parity_ratio,
                 "equalized_odds_difference": bias.equalized_odds_difference,
                 "groups": {g: m.model_dump(include={"n", "base_rate", "selection_rate", "tpr", "fpr"})
                            for g, m in sorted(bias.groups.items())},
                 "failures": bias.failures},
        "sources": {name: sha256_file(directory / name) for name in CARD_SOURCES},
    }


def _number(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people; deterministic, so ``verify-artifacts`` can compare it with the JSON."""
    data, ev, bias = card["training_data"], card["evaluation"], card["bias"]
    lines = [f"# Model card: {card['model']} {card['version']}", "",
             f"- **Task**: {card['task']} ({card['estimator']})", f"- **Trained at**: {card['trained_at']}",
             f"- **Evaluation**: {ev['status']}; **bias**: {bias['status']}", "",
             "## Intended use", "", card["intended_use"] or f"_{NOT_STATED}_", "",
             "## Out of scope", ""]
    lines += [f"- {u}" for u in card["out_of_scope_uses"]] or [f"_{NOT_STATED}_"]
    lines += ["", "## Limitations", ""]
    lines += [f"- {u}" for u in card["limitations"]] or [f"_{NOT_STATED}_"]
    features = card["features"]
    lines += ["", f"## Features ({features['n_features']}, contract `{features['contract'] or '-'}`, in order)", "",
              ", ".join(f"`{f}`" for f in features["names"]), "",
              "## Training data", "", "| | |", "|---|---|",
              f"| source | {data['source']} |", f"| snapshot sha256 | `{data['sha256']}` |",
              f"| rows | {data['rows']} |", f"| feature store sha256 | `{data['feature_store_sha256']}` |",
              f"| feature store ref | {data['feature_store_ref'] or '-'} |",
              f"| config sha256 | `{data['config_sha256']}` |", f"| pipeline commit | `{data['pipeline_commit']}` |",
              f"| seed | {data['seed']} |",
              "| libraries | " + ", ".join(f"{k} {v}" for k, v in data["libraries"].items()) + " |",
              "", f"## Evaluation: {ev['status']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(v)} |" for k, v in sorted(ev["metrics"].items())]
    if ev["backtest"]:
        lines += [f"| backtest {k} | {_number(v)} |" for k, v in sorted(ev["backtest"].items())]
    lines += ["", "Acceptance: " + (", ".join(f"{k} {_number(v)}" for k, v in sorted(ev["acceptance"].items())
                                              if v is not None) or "none")]
    lines += [f"- FAILED: {f}" for f in ev["failures"]]
    lines += ["", f"## Bias: {bias['status']} (protected attribute `{bias['protected_attribute']}`, "
                  f"{bias['evaluated_on']})", "",
              f"- demographic parity difference {_number(bias['demographic_parity_difference'])}, "
              f"ratio {_number(bias['demographic_parity_ratio'])}; equalized odds difference "
              f"{_number(bias['equalized_odds_difference'])}",
              "- thresholds: " + ", ".join(f"{k} {_number(v)}" for k, v in sorted(bias["thresholds"].items())),
              "", "| group | n | base rate | selection rate | TPR | FPR |", "|---|---|---|---|---|---|"]
    lines += [f"| {g} | {m['n']} | {_number(m['base_rate'])} | {_number(m['selection_rate'])} | "
              f"{_number(m['tpr'])} | {_number(m['fpr'])} |" for g, m in bias["groups"].items()]
    lines += [f"- FAILED: {f}" for f in bias["failures"]]
    lines += ["", "## Derived from", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| {name} | `{sha}` |" for name, sha in card["sources"].items()]
    return "\n".join(lines) + "\n"


def write_model_card(directory: str | Path, statement: CardStatement) -> dict[str, Any]:
    """Write ``model-card.json`` and ``model-card.md`` into ``directory``; returns the card."""
    directory = Path(directory)
    card = build_model_card(directory, statement)
    (directory / CARD_JSON).write_bytes(canonical_json(card))
    (directory / CARD_MARKDOWN).write_text(render_markdown(json.loads(canonical_json(card))))
    return card


def check_model_card(directory: str | Path) -> list[tuple[str, str]]:
    """What is wrong with the card in ``directory`` as ``(file, problem)``; ``[]`` when the JSON is exactly the
    card its sources give (with the owners' statement it carries) and the Markdown is its rendering."""
    directory = Path(directory)
    try:
        card = _read(directory, CARD_JSON)
    except CardError as e:
        return [(CARD_JSON, str(e).removeprefix(f"{CARD_JSON} is "))]
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        return [(CARD_JSON, f"not a {CARD_SCHEMA} document")]
    try:
        statement = CardStatement(intended_use=card.get("intended_use"),
                                  out_of_scope_uses=tuple(card.get("out_of_scope_uses") or ()),
                                  limitations=tuple(card.get("limitations") or ()))
        expected = json.loads(canonical_json(build_model_card(directory, statement)))
    except (ValidationError, TypeError) as e:
        return [(CARD_JSON, f"invalid owners' statement: {e}")]
    except CardError as e:
        return [(CARD_JSON, f"cannot be rebuilt: {e}")]
    problems = []
    for name, sha in expected["sources"].items():
        if card.get("sources", {}).get(name) != sha:
            problems.append((CARD_JSON, f"derived from a different {name} (sha256 {card.get('sources', {}).get(name)}"
                                        f", the file has {sha})"))
    if not problems:
        differing = sorted(k for k in expected.keys() | card.keys() if expected.get(k) != card.get(k))
        if differing:
            problems.append((CARD_JSON, f"does not match its sources in: {', '.join(differing)}"))
    try:
        markdown = (directory / CARD_MARKDOWN).read_text()
    except FileNotFoundError:
        problems.append((CARD_MARKDOWN, "missing"))
    except (OSError, UnicodeDecodeError) as e:
        problems.append((CARD_MARKDOWN, f"unreadable: {e}"))
    else:
        if markdown != render_markdown(card):
            problems.append((CARD_MARKDOWN, f"is not the rendering of {CARD_JSON}"))
    return problems
