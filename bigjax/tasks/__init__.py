"""The one table from `config.task` to the objective the loop trains."""

from bigjax.tasks.lm import LanguageModelTask
from bigjax.tasks.mlm import MaskedLanguageModelTask

TASKS = {
    "lm": LanguageModelTask,
    "mlm": MaskedLanguageModelTask,
}
