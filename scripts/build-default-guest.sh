#!/usr/bin/env bash
# Placeholder: builds the default guest into $1 (see DESIGN "The default guest").
set -euo pipefail
mkdir -p "$1"
