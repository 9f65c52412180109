"""Tenant access: one splitter alias per tenant, invocable by that tenant's principals alone.

A direct Lambda invoke carries no caller identity into the function, but it does carry the ARN
it was invoked through (``context.invoked_function_arn``), which IAM decides and no caller can
forge. So each tenant with ``principals`` in ``cdk.json``'s ``scheduling.tenants`` gets an alias
``tenant-<name>`` of the splitter, with an invoke permission for those principals only; the
splitter runs a request that came through it as that tenant and refuses a request naming another
(``shardq.core.tenancy.Scheduling.resolve``). The unqualified function stays the platform team's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from stacks.tenancy_config import tenancy


class TenantAliases(Construct):
    """The splitter's ``tenant-<name>`` aliases and their invoke permissions.

    Parameters
    ----------
    splitter:
        The splitter function.
    principals:
        Tenant name → IAM principal ARNs that may submit as it (tenants without any get no alias).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        splitter: lambda_.Function,
        principals: Mapping[str, Sequence[str]],
    ) -> None:
        super().__init__(scope, construct_id)
        self.aliases: dict[str, lambda_.Alias] = {}
        version = splitter.current_version
        for name, arns in sorted(principals.items()):
            if not arns:
                continue
            alias = lambda_.Alias(
                self, f"Tenant-{name}", alias_name=f"{tenancy().ALIAS_PREFIX}{name}", version=version
            )
            for arn in arns:
                alias.grant_invoke(iam.ArnPrincipal(arn))
            self.aliases[name] = alias
