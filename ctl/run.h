/*
 * ctl/run.h -- `eqctl run`: one command that trains an experiment on this
 * machine.  It starts N eq-loaders, one eq-eval (serve) and one eq-trainer
 * per rank (--ranks, [train] ranks; the programs beside eqctl) on ipc:// endpoints in a private directory,
 * follows the trainer's and the evaluator's METRICS, prints progress and a
 * summary, writes OUT_DIR/metrics.svg (train loss per step, val Top-1 per
 * epoch), and stops everything cleanly at the end, on Ctrl-C, or when a part
 * fails (eq-eval, the trainer, or the last loader: a loader that dies while
 * others live is reported and the trainer goes on with the others).  Logs of every process go to OUT_DIR/logs/.
 *
 * Exit status: 0 trained and evaluated; 1 a part failed (the summary names
 * it); 2 bad usage or config; 3 interrupted (the trainer wrote a checkpoint
 * to resume from).
 */
#ifndef EQ_CTL_RUN_H
#define EQ_CTL_RUN_H

#define EQ_CTL_RUN_USAGE \
    "CONFIG [--loaders N] [--ranks N] [--set SECTION.KEY=VALUE ...] [--resume CKPT] [--pretrained FILE] [--evaluate] " \
    "[--policy FILE] [--json]"

/* argv[0] is the command name; getopt_long state must be reset (optind = 1)
 * by the caller, as eqctl's dispatcher does. */
int eq_ctl_run_main(int argc, char **argv);

#endif
