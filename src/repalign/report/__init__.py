"""Figures and the self-contained HTML report (``repalign report DIR``).

``plots``: pure ``rows → Figure`` functions; ``html``: :func:`write_report`; ``reference``: the
paper's published values as data.
"""
from repalign.report.html import write_report
from repalign.report.plots import (OKABE_ITO, plot_alignment, plot_angles, plot_final_vs,
                                   plot_heatmaps, plot_knn, plot_loss_gap, plot_loss_gap_vs_classes, plot_theory,
                                   plot_train_loss, plot_weight_gap, save_figure,
                                   weight_growth_fits)

__all__ = ["write_report", "OKABE_ITO", "plot_alignment", "plot_angles", "plot_final_vs",
           "plot_heatmaps", "plot_knn", "plot_loss_gap", "plot_loss_gap_vs_classes", "plot_theory",
           "plot_train_loss", "plot_weight_gap", "save_figure", "weight_growth_fits"]
