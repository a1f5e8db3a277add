"""Model checks: ``smaller-model-available``.

Reads ``ctx.facts.model`` (:class:`~perfcallbacks.model_facts.ModelFacts`: class, HF config
facts) and ``ctx.facts.hf.task`` (set by the HF adapter when the model is a
``*ForSequenceClassification`` / has a classifier head).
"""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# BERT-base: 12 layers x 768 hidden. Anything this size or larger used for
# classification is a candidate for a distilled / MiniLM-class model.
BASE_LAYERS = 12
BASE_HIDDEN = 768
# DistilBERT: 6 layers x 768 hidden, ~97% of BERT-base's GLUE score (Sanh et al. 2019).
DISTILBERT_LAYERS = 6
DISTILBERT_HIDDEN = 768
# Names that mark a model as already small/distilled: no hint for those.
_SMALL_MARKERS = ("distil", "minilm", "tiny", "small", "mini", "mobile", "albert")
_CLASSIFY_MARKERS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice",
                     "ForQuestionAnswering")
_CLASSIFY_TASKS = ("classification", "multiple-choice", "question-answering")


def is_classifier(ctx: RunContext) -> bool:
    """The model is used for classification: adapter's ``task`` setting, class or config names."""
    task = ctx.facts.hf.task or ""
    if any(t in task for t in _CLASSIFY_TASKS):
        return True
    model = ctx.facts.model
    names = [model.class_name or "NoneType", *model.architectures]
    return any(marker in name for name in names for marker in _CLASSIFY_MARKERS)


SMALLER_MODEL_AVAILABLE = HintSpec(
    id="smaller-model-available", category="model", severity="info",
    title="A BERT-base-sized encoder used for classification",
    what="Fires when an encoder of 12 layers x 768 hidden or larger is used for sequence classification.",
    why="DistilBERT (6 layers) keeps ~97% of BERT-base's GLUE score at 2x the speed; MiniLM-class models are faster still.",
    fix="Try distilbert-base-uncased or a MiniLM checkpoint and compare validation metrics.",
    evidence=("num_layers", "hidden_size", "model_type", "model_class"),
)


@check(SMALLER_MODEL_AVAILABLE, phases=("setup",))
def smaller_model_available(ctx: RunContext) -> Hint | None:
    model = ctx.facts.model
    if not model.has_config or model.is_decoder or model.is_encoder_decoder:
        return None
    layers, hidden = model.num_layers, model.hidden_size
    if layers is None or hidden is None or layers < BASE_LAYERS or hidden < BASE_HIDDEN:
        return None
    name = " ".join(str(x) for x in (model.name_or_path or "", model.model_type or "", model.class_name)).lower()
    if any(marker in name for marker in _SMALL_MARKERS) or not is_classifier(ctx):
        return None
    # Encoder cost scales with layers x hidden^2 (projections and FFN dominate).
    impact = (layers * hidden**2) / (DISTILBERT_LAYERS * DISTILBERT_HIDDEN**2)
    candidates = "distilbert-base-uncased (6x768) or microsoft/MiniLM-L12-H384-uncased (12x384)"
    fix = fix_text(ctx,
                   lightning=f"load {candidates} in your LightningModule and compare validation metrics",
                   hf=f"AutoModelForSequenceClassification.from_pretrained(\"distilbert-base-uncased\", "
                      f"num_labels=...) (or {candidates}); compare eval metrics",
                   torch=f"swap the encoder for {candidates} and compare validation metrics")
    return SMALLER_MODEL_AVAILABLE.make(
        ctx.phase,
        f"A {layers}-layer x {hidden}-hidden encoder is used for classification; a distilled 6-layer model "
        f"is about {impact:.1f}x cheaper per token and usually within ~3% of the accuracy.",
        fix,
        evidence={"num_layers": layers, "hidden_size": hidden, "model_type": model.model_type,
                  "model_class": model.class_name},
        impact=impact)
