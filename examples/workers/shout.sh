#!/bin/sh
# A whole agent in a few lines of shell. Run it as a worker of a server started with
# `haip serve --agent workers`:
#
#   HAIP_AGENT_TOKEN=$(haip token --secret "$JWT_SECRET" --sub shouter --role agent) \
#     haip worker -- examples/workers/shout.sh
#
# `haip worker` runs it once per user message, with the message in $HAIP_TEXT (and the
# whole job as one JSON line on stdin). Each line it prints is a line of the answer.
echo "You said:"
printf '%s\n' "$HAIP_TEXT" | tr '[:lower:]' '[:upper:]'
