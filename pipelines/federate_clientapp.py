"""A long-running ClientApp process for a SuperNode in process isolation (``--isolation process``).

In Flower 1.42 every message a SuperNode receives becomes a task that a SuperExec runs in a FRESH
``flwr-clientapp`` process (``--isolation subprocess``: the SuperNode's own SuperExec; ``--isolation
process``: an external ``flower-superexec``, same per-task process). Each message then pays the Python,
Flower and torch imports and the site's data load again (~3 s on a loaded 2-core machine).

This worker takes the SuperExec's place next to ``flower-supernode --isolation process``: it acquires the
node's ClientApp tasks from the SuperNode's Runtime API and runs each in THIS process, with the same
steps as ``flwr.supernode.runtime.run_clientapp`` (pull message + context, call the ClientApp, push the
reply and the context back). What stays warm across messages: imported modules, the ClientApp object of
each FAB (by hash) and the node's prepared site (``core.federation.node``'s cache, keyed by the run's
vertical, data options, seed and the data file's size and mtime). Per-run state is NOT kept here: it
travels in the ``Context`` the SuperNode hands over with every task, as with ``flwr-clientapp``.

Trade-off: messages no longer run in separate processes, so a change of the toolkit's code on the node
needs a worker restart, and two FABs whose ClientApp modules share a name would share the first one loaded.

    python -m pipelines.federate_clientapp --runtime-api-address 127.0.0.1:9094 --insecure [--parent-pid PID]

(``fml federate supernode --isolation process`` starts and supervises it.)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from flwr.app import Message
from flwr.app.error import Error
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

LOG = logging.getLogger("fml.clientapp")


class ClientAppWorker:
    """Acquire and run the ClientApp tasks of one SuperNode, one at a time, in this process.

    Args:
        runtime_api_address: the SuperNode's Runtime API, ``HOST:PORT`` (its ``--host``/``--port``).
        insecure: plain HTTP to the Runtime API (loopback); else ``root_certificates`` (PEM bytes).
        root_certificates: CA of the Runtime API's TLS certificate.
        poll_interval: seconds between task polls while the node is idle.
    """

    def __init__(self, runtime_api_address: str, insecure: bool = True, root_certificates: Optional[bytes] = None,
                 poll_interval: float = 0.1) -> None:
        self.address, self.insecure, self.root_certificates = runtime_api_address, insecure, root_certificates
        self.poll_interval = poll_interval
        self.apps: dict[str, ClientApp] = {}  # FAB hash -> its loaded ClientApp
        self.tasks_run = 0

    def _client(self, interceptors: list[Any], retry: Any = None) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure, root_certificates=self.root_certificates,
            interceptors=interceptors, retry_invoker=retry or make_simple_http_retry_invoker())

    def serve(self, max_tasks: Optional[int] = None) -> None:
        """Poll for tasks and run them until interrupted (or after ``max_tasks``)."""
        control = self._client([RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        try:
            while max_tasks is None or self.tasks_run < max_tasks:
                res = control.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
                if res.HasField("task") and res.token:
                    self.run_task(res.token)
                    continue  # the next message may already be waiting
                time.sleep(self.poll_interval)
        finally:
            control.close()

    def run_task(self, token: str) -> None:
        """One task, as ``flwr-clientapp --token`` runs it, without leaving the process."""
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http

        retry = make_simple_http_retry_invoker()  # retries forever while the node is unreachable
        client = self._client([RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                               RuntimeTokenHttpInterceptor(token)], retry)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))  # keeps the task's token alive
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        start = time.perf_counter()
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            reply = self.app(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except KeyboardInterrupt:  # stopping (the SuperNode is gone): report once, never wait for it
            retry.max_tries = 1
            raise
        except Exception as err:  # the node gets an error reply, the worker serves the next task
            LOG.exception("ClientApp task failed")
            code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(err, LoadClientAppError)
                    else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            details = f"{type(err)}:<'{err}'>"
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:  # the node records the task as failed when its token expires
                LOG.exception("could not push the reply to the SuperNode")
            finally:
                push_task_output(client, context, status, details)
                if heartbeat.is_running:
                    heartbeat.stop()
                client.close()
                self.tasks_run += 1
                kind = message.metadata.message_type if message is not None else "?"
                LOG.info("task %d done: %s message, %s, %.2fs in pid %d", self.tasks_run, kind, status,
                         time.perf_counter() - start, os.getpid())

    def app(self, run: Any, fab: Any) -> ClientApp:
        """The run's ClientApp, installed from its FAB and loaded once per FAB hash."""
        if fab.hash_str not in self.apps:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.federate_clientapp",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's Runtime API")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API (loopback)")
    parser.add_argument("--root-certificates", help="CA file of the Runtime API's TLS certificate")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls while idle")
    args = parser.parse_args(list(argv))
    if not args.insecure and not args.root_certificates:
        parser.error("give --root-certificates FILE or --insecure")
    handler = logging.StreamHandler()  # this logger only: Flower's logger has its own handler
    handler.setFormatter(logging.Formatter("%(asctime)s fml-clientapp %(levelname)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)  # SIGINT to this process when the SuperNode is gone
    certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    LOG.info("serving ClientApp tasks of the SuperNode at %s (pid %d)", args.runtime_api_address, os.getpid())
    try:
        ClientAppWorker(args.runtime_api_address, args.insecure, certificates, args.poll_interval).serve()
    except KeyboardInterrupt:  # Ctrl-C, or the SuperNode is gone (--parent-pid)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
