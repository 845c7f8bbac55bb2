#!/usr/bin/env bash
# Fits L(N, D, E) = E0 + A / (N E^delta)^alpha + B / D^beta to the dense and MoE runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=experiments/moe/sweep
echo "fit.sh: not written yet"
