"""Evaluation: top-1 accuracy and output MSE (batched), and the task that joins a model to its data.

    from mixq.evaluation import load_task, accuracy
    task = load_task("resnet20-jpeg", samples=50, seed=0)   # model + calibration samples + test split
    task.top1(task.model)
"""

from mixq.evaluation.metrics import accuracy, output_mse, predict
from mixq.evaluation.sweep import SweepRow, uniform_sweep
from mixq.evaluation.task import Task, load_task

__all__ = ["SweepRow", "Task", "accuracy", "load_task", "output_mse", "predict", "uniform_sweep"]
