"""Exit statuses of ``megasparse.train``, distinct so that a job script can tell what happened
(and, say, requeue only what a restart can fix).

The deepspeed launcher, srun and mpirun pass on the status of the first rank that failed.
"""

OK = 0
BUG = 1  # an unexpected exception: a traceback follows
BAD_INPUT = 2  # configuration, data, tokenizer or checkpoint problem: one line says what to fix
DISK_FULL = 3  # a checkpoint could not be written (no room on the disk, an I/O error); the previous one is intact
NON_FINITE = 4  # NaN/Inf loss or gradients (train.nonfinite); the last good checkpoint is kept
HUNG_RANK = 5  # a rank stopped making progress for train.collective_timeout_s; the report names it
