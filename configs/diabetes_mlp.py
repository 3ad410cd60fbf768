"""MLP regression of diabetes progression from 10 features (scikit-learn's diabetes; no download).

    python -m bigjax.train --config=configs/diabetes_mlp.py --workdir=runs/diabetes_mlp

442 patients, 20% held out (a fixed split). Eval reports MSE, RMSE, MAE and R^2 in the target's
units. On this split scikit-learn's LinearRegression gets R^2 0.33 (MSE 3424); this MLP ends at
R^2 0.33 (MSE 3442) after 500 steps, on a 2-core CPU in under a minute: the data is small and
mostly linear.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.task = "regress"
  c.data.source = "sklearn"
  c.data.name = "diabetes"
  c.data.val_fraction = 0.2  # 89 test patients
  c.model.name = "mlp"
  c.model.hidden = (64, 64)
  c.steps = 500
  c.batch_size = 32
  c.log_every = 100
  c.eval_every = 100
  c.checkpoint_every = 500
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 1e-2
  c.optim.b2 = 0.999
  return c
