/*
 * trainer/eq_model_main.c -- `eq-model`: run a model once over safetensors
 * files (see eq_model_cli in trainer/model_run.h).
 *     eq-model run --config C --in X.safetensors --out Y.safetensors --train
 */
#include "trainer/model_run.h"

int main(int argc, char **argv)
{
    return eq_model_cli(argc - 1, argv + 1);
}
