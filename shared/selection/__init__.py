"""Selection rules: choose the converted series a downstream algorithm needs.

Clara's rules format works unchanged (``{"selections": [{"name": ..., "conditions": {...}}]}``);
seriesflow adds explicit operators, ``all``/``any``/``not`` groups, derived attributes,
``pick``/``orderBy`` and :func:`explain`. The language is documented in ``docs/rules.md``.

    rules = parse_rules(text, source="rules.json")
    selected = select(rules, metadata, series_images)   # selected-images.json
    print(render_explanation(explain(rules, metadata, series_images)))
"""

from shared.selection.attributes import DERIVED_ATTRIBUTES
from shared.selection.engine import SelectedImages, select
from shared.selection.explain import (
    CandidateCheck,
    ConditionCheck,
    NonCandidateInfo,
    SelectionCheck,
    SelectionExplanation,
    explain,
    render_explanation,
)
from shared.selection.parsing import load_rules_file, parse_rules, rules_from_data
from shared.selection.rules import Selection, SelectionRules
from shared.selection.sources import (
    CLARA_RULES_FILE,
    DEFAULT_RULES_FILE,
    RULES_BASE64_ENV,
    RULES_FILE_ENV,
    RulesSource,
    resolve_rules,
)

__all__ = [
    "CLARA_RULES_FILE",
    "DEFAULT_RULES_FILE",
    "DERIVED_ATTRIBUTES",
    "RULES_BASE64_ENV",
    "RULES_FILE_ENV",
    "CandidateCheck",
    "ConditionCheck",
    "NonCandidateInfo",
    "RulesSource",
    "SelectedImages",
    "Selection",
    "SelectionCheck",
    "SelectionExplanation",
    "SelectionRules",
    "explain",
    "load_rules_file",
    "parse_rules",
    "render_explanation",
    "resolve_rules",
    "rules_from_data",
    "select",
]
