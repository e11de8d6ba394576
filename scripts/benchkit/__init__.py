"""The parts of scripts/bench.py, one job a module; bench.py is the command that runs them.

settings  how much work a sample does (QUICK, FULL) and the sizes of the work
timing    how a sample is taken: per-unit time, checks, scratch files, medians
ours      the stageline side of every case
peers     the LangGraph side of every case
floor     bare SQLite commits: the floor under stageline's durable commits
cold      fresh processes that resume a paused run (one per library)
probe     the paused-runs memory probe, run in a child process
cases     the table of cases: their measures, information rows and targets
runner    a case run into rows of medians
report    the printed tables and the setting line
sweeps    the scaling sweeps of --plot
plot      the sweeps drawn with matplotlib
args      bench.py's flags and their checks
"""
