"""Analysis of run records: pure functions from DataFrames to tables, figures and reports.

Read first: ``summary.py`` (what every summary column means), then ``report.py`` (what a run
directory holds). Every function takes any requests frame that passes ``records.validate_frame``,
so sim and live runs go through the same code.
"""

from .figures import plot_latency_cdfs, plot_routing_shares, plot_utilisation
from .report import read_requests, report_from_dir, write_report
from .summary import meets_slo, percentiles, slo_attainment, slo_thresholds, summarize

__all__ = [
    "summarize",
    "slo_attainment",
    "meets_slo",
    "slo_thresholds",
    "percentiles",
    "plot_latency_cdfs",
    "plot_utilisation",
    "plot_routing_shares",
    "write_report",
    "report_from_dir",
    "read_requests",
]
