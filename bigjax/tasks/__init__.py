"""The one table from `config.task` to the objective the loop trains."""

from bigjax.tasks.lm import LanguageModelTask

TASKS = {
    "lm": LanguageModelTask,
}
