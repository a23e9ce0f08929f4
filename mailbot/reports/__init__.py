"""Statistical reports for the board: numbers from the database (``data``), charts
(``charts``), and the report as HTML, PDF and CSV (``render``).  See data.py for what each
figure means and why no personal data can appear in it."""

from mailbot.reports.data import Report, build_report, case_summary, record_action, scrub
from mailbot.reports.render import render_csv, render_html, render_pdf

__all__ = ["Report", "build_report", "case_summary", "record_action", "scrub", "render_csv",
           "render_html", "render_pdf"]
