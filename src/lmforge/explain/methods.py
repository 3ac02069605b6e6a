"""Names of the attribution methods (no heavy imports: the CLI's argument parser uses them)."""

GRADIENT_METHODS = ("grad", "gradxinput", "ig", "smoothgrad")
ATTENTION_METHODS = ("attention", "rollout")
PERTURBATION_METHODS = ("occlusion", "lime", "shap")
METHODS = GRADIENT_METHODS + ATTENTION_METHODS + PERTURBATION_METHODS + ("random",)
UNSIGNED_METHODS = ("grad", "smoothgrad", "attention", "rollout", "random")  # magnitudes, never negative
CAUSAL_METHODS = ("grad", "gradxinput", "ig", "occlusion")  # those a prompted causal LM supports (explain/causal.py)
REDUCTIONS = ("sum", "mean")  # the answer's log-probability: summed over its tokens, or their mean
