from stageline.cli import main

main(prog_name="stageline")  # as the console script: usage lines, _STAGELINE_COMPLETE
