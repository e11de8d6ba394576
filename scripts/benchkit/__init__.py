"""The parts of scripts/bench.py, one job a module; bench.py is the command that runs them.

settings  how much work a sample does (QUICK, FULL) and the sizes of the work
timing    how a sample is taken: per-unit time, checks, scratch files, medians
ours      the stageline side of every case
peers     the LangGraph side of every case
dbos_peer the DBOS side of the durable cases (SQLite and PostgreSQL system databases)
durable_cases  the new durable cases' stageline and LangGraph sides (throughput on SQLite
          and PostgreSQL, a step on PostgreSQL, a message to a waiting run)
pg        PostgreSQL: is it there, scratch schemas
floor     bare SQLite / PostgreSQL commits: the floor under stageline's durable commits
cold      fresh processes that resume a paused run (one per library)
probe     the paused-runs memory probe, run in a child process
cases     the table of cases: their measures, information rows and targets
runner    a case run into rows of medians
report    the printed tables and the setting line
sweeps    the scaling sweeps of --plot
durable_sweep  durable throughput against runs in flight (--durable-sweep)
plot      the sweeps drawn with matplotlib
args      bench.py's flags and their checks
"""
