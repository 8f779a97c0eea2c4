"""The project's own small MDLMs (models/): mask id, EOS and logit convention come from each checkpoint."""

from .base import Family

TINY = Family(name="tie-tiny", model_types=("tie-tiny",), auto_class="AutoModelForMaskedLM", trust_remote_code=False,
              native_module="tie_lite.models.tiny", single_turn=True, canvas_length=64)
