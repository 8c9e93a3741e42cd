# The agent over vsock: while L2 runs, poll the VMM's API every second and
# keep what /v1/containers and /v1/processes answered.
mkdir -p /tmp/vs /results/api
(
    wait_for /tmp/api.sock 200 || exit 0
    i=0
    while [ -S /tmp/api.sock ] && [ $i -lt 200 ]; do
        api_get /tmp/api.sock /v1/containers "/results/api/containers-$(printf %03d $i).http"
        api_get /tmp/api.sock /v1/processes /tmp/processes.http && cp /tmp/processes.http /results/api/processes-last.http
        grep -q rsrc-b /tmp/processes.http && [ ! -e /results/api/processes-first.http ] \
            && cp /tmp/processes.http /results/api/processes-first.http
        i=$((i + 1))
        sleep 1
    done
) &
run_l2 agent --vsock cid=3,uds=/tmp/vs/v.sock --api-sock /tmp/api.sock
wait
