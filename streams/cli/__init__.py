"""The `leadflow` command: worker, topics, rules, sample data, demo and contract tools.

Each command is a module of this package; here they are put on the app, in the order
`leadflow --help` lists them.
"""

from __future__ import annotations

import typer

from streams.cli.backtest import backtest_command
from streams.cli.collector import collector_command
from streams.cli.demo import demo_command
from streams.cli.docs import docs_generate
from streams.cli.explain import explain_command
from streams.cli.handoffs import handoffs_command
from streams.cli.importing import import_command
from streams.cli.migrate import migrate_command
from streams.cli.notify import notify_command
from streams.cli.produce import produce_command
from streams.cli.report import report_command
from streams.cli.rescore import rescore_command
from streams.cli.rules import rules_check
from streams.cli.sales import record_command
from streams.cli.sample import sample_generate
from streams.cli.schemas import schemas_generate
from streams.cli.tail import tail_command
from streams.cli.topics import topics_create
from streams.cli.worker import worker_command

app = typer.Typer(
    help="leadflow: real-time lead scoring, MQL handoff and sales SLA watching on Kafka + Redis.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    # An unexpected error's traceback must never print local variables (settings, passwords).
    pretty_exceptions_show_locals=False,
)
topics_app = typer.Typer(help="Manage leadflow's Kafka topics.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and inspect rules files.", no_args_is_help=True)
schemas_app = typer.Typer(
    help="The wire contract: JSON Schema and AsyncAPI files.", no_args_is_help=True
)
sales_app = typer.Typer(
    help="Sales activity by hand: for trying things out, or a team without a CRM connector.",
    no_args_is_help=True,
)
sample_app = typer.Typer(help="Synthetic engagement data.", no_args_is_help=True)
docs_app = typer.Typer(
    help="Reference tables in docs/, generated from the code.", no_args_is_help=True
)
app.add_typer(topics_app, name="topics")
app.add_typer(rules_app, name="rules")
app.add_typer(schemas_app, name="schemas")
app.add_typer(sample_app, name="sample")
app.add_typer(docs_app, name="docs")
app.add_typer(sales_app, name="sales")

topics_app.command("create")(topics_create)
rules_app.command("check")(rules_check)
schemas_app.command("generate")(schemas_generate)
sample_app.command("generate")(sample_generate)
docs_app.command("generate")(docs_generate)
sales_app.command("record")(record_command)

app.command("worker")(worker_command)
app.command("collector")(collector_command)
app.command("notify")(notify_command)
app.command("produce")(produce_command)
app.command("import")(import_command)
app.command("handoffs")(handoffs_command)
app.command("tail")(tail_command)
app.command("explain")(explain_command)
app.command("demo")(demo_command)
app.command("report")(report_command)
app.command("rescore")(rescore_command)
app.command("backtest")(backtest_command)
app.command("migrate")(migrate_command)


def main() -> None:
    app()
