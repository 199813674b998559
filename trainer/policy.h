/*
 * trainer/policy.h -- the original's policy files (ORIGINAL.md §5.5,
 * models/policy.py): a plain-text file that changes quantizer options at
 * start-up (`on init`) and at given epochs (`on epoch: 2 5`), and the
 * table of a model's quantized layers that policies (and the per-epoch
 * quantizer statistics of metrics.jsonl) address by index.
 *
 * File syntax, read with the original's rules (doc/config.md "Policy
 * files" has examples):
 *   - each line loses its newline and surrounding spaces; an empty line or
 *     one starting with '#' is skipped; text after '#' is dropped;
 *   - the rest is split at ':'; a line without ':' ENDS the policy (the
 *     original's rule; eq logs how many lines it left unread);
 *   - a line whose left part has the word `on` is a section header: `on
 *     init:` or `on epoch: E1 E2 ...` (the trigger epochs, 0-based, as the
 *     original's loop counts them);
 *   - inside a section, a key containing `by_` (by_index, by_tag) starts a
 *     rule (consecutive by_ keys belong to the same rule); other keys are
 *     the rule's attributes, applied in the order written (a repeated key
 *     keeps its first position and takes the last value);
 *   - a value with commas is a list split at commas, else with spaces a
 *     list split at spaces; list items True/true/False/false are booleans.
 * Where the original silently ignores something, eq refuses it with an
 * error naming file:line: a section other than init/epoch (norm, eltwise,
 * ...; eq has no such quantizers), a second section of the same kind (the
 * original keeps only the last), a line outside a section or an attribute
 * before the rule's first by_ key, a rule without by_index (it selects
 * nothing in the original), a by_tag other than wt/fm/ot, a non-integer
 * index or trigger, an unknown attribute, an option that shapes the
 * quantizer's state (method, bit, level, half_range, quant_group,
 * adaptive, index), or a value of the wrong type.
 *
 * Rules select quantizers: by_index `all` or a list of layer indices, and
 * optionally by_tag (a list of wt, fm, ot).  Attributes:
 *   level_num    integer; v > 0 sets the level count, v < 0 means current + v;
 *                with `progressive` the clip value is multiplied by
 *                (v - 1)/(L_old - 1) and its optimiser state is zeroed
 *                (ORIGINAL.md §2.8).  Methods whose structure depends on
 *                the level count (nonuniform, lqnet, xnor, bin) refuse.
 *   progressive  true/false: whether later level changes rescale the clip.
 *   enable, stable, adaptive_restore, quant_loss_enable,
 *   quant_loss_function, quant_loss_alpha
 *                run-time options, set with eq_quant_set_option on each
 *                selected quantizer (the model's own objects, found with
 *                eq_model_quant); values are checked by that function when
 *                the file is parsed, so a bad one fails before training.
 *   <state>      a quantizer state tensor (clip_val, step_size, alpha0,
 *                alpha1, alpha2, gamma, iteration, basis, ...) filled with
 *                a number, as the original fills tensors in place;
 *                quantizers without that tensor are skipped.
 *
 * Layer indices (eq_qlayers) follow the original's model.modules() order
 * of custom_conv/custom_linear modules, which is the model's build order:
 * in resnetNN a block's shortcut conv comes before conv1/conv2.  A layer
 * counts when it has a quantizer, and also when the original builds it as
 * a full-precision custom_conv (force_fp) inside a quantized network: the
 * real_skip shortcut and shrink convs, MobileNet's real_dp/real_pt convs --
 * i.e. every FP conv/linear except the stem (first conv) and the
 * classifier (last linear).  Rules skip FP layers, as the original does.
 *
 * Resume: the trainer applies `init` at start-up and each trigger epoch's
 * rules before that epoch's first step.  A resumed run re-applies what the
 * epochs before its resume point applied with options_only: the option
 * attributes (progressive and the run-time options) again, in epoch
 * order, the tensor ones (level_num, state fills, optimiser resets) not,
 * because the checkpoint holds their effect.
 *
 * Not thread-safe; the objects are used by the trainer's thread.
 */
#ifndef EQ_TRAINER_POLICY_H
#define EQ_TRAINER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "quant/quant.h"
#include "trainer/model.h"
#include "trainer/optim.h"

/* ---- a model's quantized layers ------------------------------------------ */

typedef struct eq_qlayers eq_qlayers;

/* The quantized layers of `m` (borrowed; must outlive the table) in index
 * order.  `q[tag]` is the config of that tag's quantizers (NULL or not
 * enabled: none; its method and `progressive` are read).  Caller owns the
 * result.  Errors: EQ_ERR_NOMEM; EQ_ERR_INTERNAL for quantizer state
 * without a level_num. */
eq_qlayers *eq_qlayers_new(eq_model *m, const eq_model_quant_cfg *const q[EQ_QTAG_COUNT], eq_err *err);
void eq_qlayers_destroy(eq_qlayers **t_p);
size_t eq_qlayers_count(const eq_qlayers *t);
/* Layer i's name ("layer1.0.conv1"); NULL when out of range. */
const char *eq_qlayers_name(const eq_qlayers *t, size_t i);
/* Whether layer i has a quantizer for `tag`. */
bool eq_qlayers_has(const eq_qlayers *t, size_t i, eq_quant_tag tag);
/* Its level count (level_num), -1 when it has none. */
int eq_qlayers_levels(const eq_qlayers *t, size_t i, eq_quant_tag tag);
/* Its state tensor `name` ("clip_val"), NULL when absent. */
const eq_model_tensor *eq_qlayers_state(const eq_qlayers *t, size_t i, eq_quant_tag tag, const char *name);

/* The per-epoch quantizer statistics as one JSON array (no newline), an
 * element per (layer, tag) with a quantizer:
 *   {"index":I,"layer":"layer1.0.conv1","tag":"wt","method":"lsq","levels":L,
 *    "iteration":N,
 *    "clip_val":V  or  {"n":G,"min":..,"mean":..,"max":..}   (and likewise
 *        step_size, alpha0..2, gamma: a scalar, or a summary of per-group values),
 *    "frac":[f_0, ..., f_{L-1}]}
 * `frac` is the fraction of the quantizer's elements at each of its L
 * levels: for lsq weights (without adaptive normalisation or with
 * var-mean), from the current weights and clip values (what the next
 * forward quantizes them to); for every other quantizer whose levels
 * follow from its state (dorefa, pact, lsq, lsq-step, nonuniform without
 * closed_form; bin and xnor by sign), from its output in the model's most
 * recent forward (eq_model_quant_output: the trainer calls this right
 * after an epoch's last training step; each group's scale is refitted to
 * that output, as the optimiser step after the forward moved the state),
 * counting padding zeros where the conv pads before quantizing, as the
 * original quantizes them.  Absent for
 * lqnet (learned levels) and whenever that output is not on the levels:
 * no forward yet, the quantizer disabled or in its warm-up, adaptive_restore,
 * or a grouping it cannot place.  Caller frees *json. */
eq_status eq_qlayers_stats_json(const eq_qlayers *t, char **json, eq_err *err);

/* ---- policy files ---------------------------------------------------------- */

typedef enum eq_policy_section { EQ_POLICY_INIT = 0, EQ_POLICY_EPOCH, EQ_POLICY_NSECTIONS } eq_policy_section;

typedef struct eq_policy eq_policy;

/* Parse policy text; `name` (the file name) prefixes every error and log
 * line ("policy.txt:3: ...").  Errors: EQ_ERR_PARSE / EQ_ERR_INVALID naming
 * name:line and the item; EQ_ERR_NOMEM.  Caller owns the result. */
eq_policy *eq_policy_parse(const char *text, const char *name, eq_err *err);
/* eq_policy_parse of a file (at most 1 MiB); EQ_ERR_IO/NOTFOUND naming it. */
eq_policy *eq_policy_load(const char *path, eq_err *err);
void eq_policy_destroy(eq_policy **p_p);

/* Rules in a section. */
size_t eq_policy_rule_count(const eq_policy *p, eq_policy_section s);
/* The epoch section's last trigger epoch, -1 when it has none. */
int64_t eq_policy_last_trigger(const eq_policy *p);
/* Whether `epoch` is one of the epoch section's triggers. */
bool eq_policy_triggers(const eq_policy *p, int64_t epoch);

/* Check every rule against the model's layers before anything runs: an
 * index beyond the table, a state tensor or level change that no selected
 * quantizer can take, a level change on a method with a fixed level
 * count, and -- simulating the level counts a fresh run goes through (init,
 * then the epoch rules at every trigger in epoch order, from the current
 * counts) -- a change leaving fewer than 2 levels.  EQ_ERR_INVALID naming
 * name:line (and the epoch). */
eq_status eq_policy_check(const eq_policy *p, const eq_qlayers *t, eq_err *err);

/* Apply section `s`'s rules (the epoch section: call it at trigger epochs
 * only) to the quantizers of `t`; `optim` (may be NULL) has its state for
 * a rescaled clip zeroed.  options_only: only the option attributes (a
 * resume re-applying what earlier epochs did).  Each change is logged.
 * Errors as eq_policy_check, and the backend's. */
eq_status eq_policy_apply(const eq_policy *p, eq_policy_section s, bool options_only, eq_qlayers *t,
                          eq_optim *optim, eq_err *err);

/* What eq_policy_apply(p, s, options_only, t) changes, as one JSON array
 * (no newline) for the trainer's `policy` metrics line, an element per
 * attribute applied, in order:
 *   {"line":7,"key":"enable","value":"False","quantizers":3}
 * (`quantizers`: how many quantizers the rule gives it).  Caller frees
 * *json.  Errors: EQ_ERR_INVALID for a bad argument, EQ_ERR_NOMEM. */
eq_status eq_policy_changes_json(const eq_policy *p, eq_policy_section s, bool options_only,
                                 const eq_qlayers *t, char **json, eq_err *err);

#endif
