"""The `pixverse-async` command line (private: not part of the library's API; `import pixverse_async` does not
import it).

- `main`: the argument parser and the commands (`run`, `status`, `demo`, `simulate`).
- `run`: `pixverse-async run`, a manifest's rows through `as_completed` with a journal that makes a rerun resume.
- `journal`: the run's journal: what a run needs of one (`RunJournal`), and the SQLite file.
- `redis_journal`, `redis_scripts`: a run shared by many processes through Redis (`--journal redis://...`).
- `manifest`: reading a manifest (JSON Lines or CSV) into checked requests.
- `progress`: what a run and `status` show (the live display, plain lines, tables).
- `demo`: `pixverse-async demo`, the whole `run` against the built-in simulator.
"""
