# Sourced, through BASH_ENV, by the bash that Triton's Python backend starts each stub with
# (`bash -c " exec <triton_python_backend_stub> ..."`, python_backend r24.10: Triton 2.51, the bundled one);
# `nexus triton` sets BASH_ENV for tritonserver.
#
# Where the kernel's autogroups are on, the stub starts in a session of its own at the lowest weight, before its
# interpreter and numpy load (about 0.35 CPU-seconds), instead of in Triton's session, whose weight Triton's own
# threads need for the models already serving. The model file (nexusml/backend/model.py) finds the session made and
# the weight lowered, and brings the weight back once the model is warmed up; without this file (another launcher,
# python_backend from r25.08 starts stubs without a shell) it does both itself, once its own code runs
# (docs/decisions.md, "Residency: ... a stub starts at the lowest CPU weight").
#
# setsid(1) keeps the process (the pid Triton waits on) only when it leads no process group: otherwise it would
# fork, so then nothing is done. A refused weight (the kernel's rate limit) is left to the model file.
case "${BASH_EXECUTION_STRING:-}" in
    *triton_python_backend_stub*)
        nexus_autogroups=0
        read -r nexus_autogroups 2>/dev/null </proc/sys/kernel/sched_autogroup_enabled
        read -r _ _ _ _ nexus_group _ </proc/$$/stat
        if [ -z "${NEXUS_STUB_SESSION:-}" ] && [ "$nexus_autogroups" = 1 ] && [ "$nexus_group" != "$$" ] \
            && command -v setsid >/dev/null 2>&1; then
            export NEXUS_STUB_SESSION=1
            exec setsid bash -c 'unset NEXUS_STUB_SESSION; echo 19 2>/dev/null >/proc/self/autogroup; eval "$1"' \
                nexus-stub "$BASH_EXECUTION_STRING"
        fi
        unset nexus_autogroups nexus_group
        ;;
esac
