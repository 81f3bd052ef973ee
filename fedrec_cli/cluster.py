"""`fedrec k8s status|scale`: the deployment in a Kubernetes cluster, read and scaled through the
API server with the user's kubeconfig (the coordinator's side is `fedrec serve --in-cluster`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tff_pipeline.config import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, tuple[argparse.ArgumentParser, Any]]:
    """`k8s` and its subcommands: name -> (its parser, its runner)."""
    k8s = sub.add_parser("k8s", help="the deployment in a Kubernetes cluster: status, scale")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", required=True)
    for name, text in (("status", "rounds, devices per pod, ε spent (reads the cluster)"),
                       ("scale", "set the number of edge pods")):
        command = k8s_sub.add_parser(name, help=text)
        command.add_argument("--namespace", "-n", default="fedrec")
        command.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG or ~/.kube/config")
        if name == "scale":
            command.add_argument("replicas", type=int)
        else:
            command.add_argument("--json", action="store_true", help="the raw status")
    return {"k8s": (k8s, _k8s)}


def _k8s(args: argparse.Namespace) -> int:
    from coordinator.cluster import commands
    from coordinator.cluster.api import connect

    if args.k8s_command == "scale" and args.replicas < 0:
        raise ConfigError("replicas", f"must be 0 or more, got {args.replicas}")
    try:
        api = connect(kubeconfig=args.kubeconfig)
    except Exception as error:  # noqa: BLE001 - the client raises several kinds for a bad kubeconfig
        raise ConfigError("kubeconfig", f"cannot load a kubeconfig: {error}") from None
    try:
        if args.k8s_command == "scale":
            previous = commands.scale(api, namespace=args.namespace, replicas=args.replicas)
            print(f"statefulset/{commands.EDGE_STATEFULSET} in {args.namespace}: {previous} -> {args.replicas} pods")
            return 0
        status = commands.read_status(api, namespace=args.namespace)
        print(json.dumps(status, indent=2, sort_keys=True) if args.json else commands.render_status(status))
        return 0
    except Exception as error:
        if isinstance(error, OSError) or type(error).__module__.split(".")[0] == "urllib3":
            # urllib3's connection errors, after the client's retries
            raise commands.ClusterCommandError(f"cannot reach the Kubernetes API server at "
                                               f"{api.configuration.host}: {type(error).__name__}") from None
        raise
