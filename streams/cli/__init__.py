"""The `leadflow` command: worker, topics, rules, sample data, demo and contract tools.

Each command is a module of this package; here they are put on the app, in the order
`leadflow --help` lists them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from streams.cli.backtest import backtest_command
from streams.cli.collector import collector_command
from streams.cli.demo import demo_command
from streams.cli.docs import docs_generate
from streams.cli.explain import explain_command
from streams.cli.handoffs import handoffs_command
from streams.cli.helptext import install as install_help_rendering
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

install_help_rendering()

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


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the traceback of an unexpected error (as LEADFLOW_LOG_LEVEL=DEBUG does)",
        ),
    ] = False,
) -> None:
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


DEBUG_VARIABLE = "LEADFLOW_CLI_DEBUG"


def debugging() -> bool:
    """`leadflow --debug ...`, or LEADFLOW_LOG_LEVEL=DEBUG (in any case)."""
    level = os.environ.get("LEADFLOW_LOG_LEVEL", "")
    return os.environ.get(DEBUG_VARIABLE) == "1" or level.strip().upper() == "DEBUG"


def main() -> None:
    """Run `leadflow`: every way a command can end goes through here, so each ends the same.

    A usage mistake (an unknown or missing option, a bad value, a missing input file) is one
    `error:` line naming the option, exit 2; the commands' own mistakes end in `user_errors`
    (2 for input and configuration, 3 for a service that is not there); anything unexpected is
    one line too, exit 1, with the traceback only under `--debug` or LEADFLOW_LOG_LEVEL=DEBUG.
    """
    from typer import rich_utils
    from typer._click.exceptions import NoArgsIsHelpError  # Typer vendors Click

    from streams.cli.errors import fail

    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="leadflow", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        rich_utils.rich_format_error(exc)  # the help text, as Typer shows it
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # Click's usage errors (and Typer's own)
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else ""
        hint = f" (see `{where} --help`)" if where else ""
        raise SystemExit(fail(f"{exc.format_message()}{hint}", exc.exit_code).exit_code) from None
    except typer.Abort:
        rich_utils.rich_abort_error()
        sys.exit(1)
    except Exception as exc:
        if debugging():
            raise
        message = " ".join(str(exc).split()) or "(no message)"
        raise SystemExit(
            fail(
                f"unexpected {type(exc).__name__}: {message} (`leadflow --debug ...` or "
                "LEADFLOW_LOG_LEVEL=DEBUG shows the traceback)",
                1,
            ).exit_code
        ) from None
    sys.exit(code if isinstance(code, int) else 0)
