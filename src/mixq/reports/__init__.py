"""Reports drawn from result files: Markdown tables, PNG plots, the EvoQ and EMQ run reports.

    from mixq.reports import write_evoq_report, write_emq_report
    write_evoq_report("runs/evoq-resnet20-jpeg-3.0")    # report.md, fitness.png, bits.png, sensitivity.png

matplotlib is imported only when a plot is drawn (Agg backend).
"""

from mixq.reports.emq import comparison_table, plot_history, write_emq_report
from mixq.reports.evoq import evoq_report, write_evoq_report
from mixq.reports.plots import plot_bits, plot_fitness, plot_sensitivity, pyplot
from mixq.reports.tables import markdown_table

__all__ = [
    "comparison_table",
    "evoq_report",
    "markdown_table",
    "plot_bits",
    "plot_fitness",
    "plot_history",
    "plot_sensitivity",
    "pyplot",
    "write_emq_report",
    "write_evoq_report",
]
