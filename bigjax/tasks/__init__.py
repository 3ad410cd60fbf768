"""The one table from `config.task` to the objective the loop trains."""

from bigjax.tasks.classify import ClassifyTask
from bigjax.tasks.gan import GANTask
from bigjax.tasks.distill import DistillTask
from bigjax.tasks.lm import LanguageModelTask
from bigjax.tasks.mlm import MaskedLanguageModelTask
from bigjax.tasks.reconstruct import ReconstructTask
from bigjax.tasks.regress import RegressTask
from bigjax.tasks.seq2seq import Seq2SeqTask
from bigjax.tasks.sft import SftTask
from bigjax.tasks.text_classify import TextClassificationTask

TASKS = {
    "lm": LanguageModelTask,
    "classify": ClassifyTask,
    "gan": GANTask,
    "regress": RegressTask,
    "reconstruct": ReconstructTask,
    "mlm": MaskedLanguageModelTask,
    "text_classify": TextClassificationTask,
    "seq2seq": Seq2SeqTask,
    "sft": SftTask,
    "distill": DistillTask,
}
