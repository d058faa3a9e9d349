"""`kevolve report [RUN]`: a tuning run's HTML page (report.html in the run's outputs).

    kevolve report RUN_ID          the page's path (written first when the run has none: a stopped run)
    kevolve report RUN_ID --open   open it in a web browser
    kevolve report --html          print the latest run's page to stdout
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("report", help="a tuning run's HTML report: its path, the page itself, or open it")
    p.add_argument("run", nargs="?", help="the run's id (default: the latest run); `kevolve tune --list` shows them")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument("--html", action="store_true", help="print the page's HTML to stdout")
    p.add_argument("--rebuild", action="store_true", help="write the page again from the search store")
    p.set_defaults(func=run)


def run(args) -> int:
    from kevolve.errors import KevolveError
    from kevolve.report import run_page
    from kevolve.search import outputs
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        runs = store.runs()
        if args.run is None:
            if not runs:
                raise KevolveError("no runs yet in this state folder; start one with `kevolve tune SPEC`")
            run_id = runs[-1].id  # the store lists them oldest first
        else:
            run_id = store.run(args.run).id  # a clear error for an unknown id
        path = outputs.run_dir(run_id) / "report.html"
        if args.rebuild or not path.is_file():
            run_page.write(path.parent, store, run_id)
    if args.html:
        sys.stdout.write(path.read_text())
        return 0
    print(path)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            raise KevolveError(f"no web browser found here; open {path} on a machine with one")
    return 0
