"""A warm worker: `python -m plmtune.bench.zygote` imports what a run needs once (plmtune.bench.warm),
then forks one child per request, each running the plmtune CLI as a fresh process would.

The protocol is JSON lines over the worker's standard input and output (data only, never pickles):
the worker says ``{"ready": true}`` once its imports are done; the bench sends ``{"argv": [...],
"err": PATH, "threads": N|null, "blas": N, "env": {NAME: VALUE|null}}``; the worker answers
``{"pid": PID}`` when the child is started and ``{"code": EXIT}`` when it has ended (negative:
killed by that signal). The child's standard output goes to /dev/null and its error
output to PATH. The worker is single-threaded (forking a process with threads is unsafe) and ends
when its standard input closes.
"""

from __future__ import annotations

import json
import os
import sys


def _child(request: dict) -> int:
    import atexit
    import traceback

    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, os.devnull, os.O_WRONLY),
                            (2, request["err"], os.O_WRONLY | os.O_TRUNC)):
        os.dup2(os.open(path, flags), fd)
    for name, value in request["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    code = 1
    try:
        if request["threads"]:
            import torch

            torch.set_num_threads(int(request["threads"]))
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(request["blas"]), user_api="blas")
        from plmtune.cli import main

        code = main([str(a) for a in request["argv"]])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever ends the run is its error output
        traceback.print_exc()
        code = 130 if isinstance(sys.exc_info()[1], KeyboardInterrupt) else 1
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


def serve(requests, answer, answer_fd: int) -> None:
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.close(answer_fd)  # the run never holds the answers' pipe (so a dead worker reads as EOF)
            os._exit(_child(request))  # never back into this loop
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    import plmtune.bench.warm  # noqa: F401  (the imports every child inherits)

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing else may write into the answers

    def answer(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    answer({"ready": True})
    try:
        serve(sys.stdin, answer, out.fileno())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
