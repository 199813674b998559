/*
 * quant/eq_quant_main.c -- `eq-quant`: run one quantizer step over
 * safetensors files (see eq_quant_cli in quant/quant.h).
 *     eq-quant apply --tag wt --in IN.safetensors --out OUT.safetensors method=lsq bit=2
 *     eq-quant methods
 */
#include "quant/quant.h"

int main(int argc, char **argv)
{
    return eq_quant_cli(argc - 1, argv + 1);
}
