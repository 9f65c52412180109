"""Fine-grained assertions on the default shardq stack (cdk.json context), synthesized once."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match

from shardq.core import checkpoint_keys
from tests.infra.conftest import Synth

# AWS requires "Resource": "*" for these actions (no resource-level permissions). Only X-Ray here:
# Powertools Metrics writes EMF to the logs, so no role needs cloudwatch:PutMetricData.
ACTIONS_WITHOUT_RESOURCE_LEVEL_PERMISSIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
POLICY_DOCUMENT_PROPS = {
    "AWS::IAM::Policy": "PolicyDocument",
    "AWS::IAM::ManagedPolicy": "PolicyDocument",
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
    "AWS::IAM::Role": "AssumeRolePolicyDocument",
}
ENV_VARS = {
    "SHARDQ_JOB_TABLE",
    "SHARDQ_TASK_QUEUE_URL",
    "SHARDQ_RESULTS_QUEUE_URL",
    "SHARDQ_ARTIFACT_BUCKET",
    "SHARDQ_EVENT_BUS_NAME",
    "SHARDQ_JOB_TTL_DAYS",
    "SHARDQ_FANOUT_IN_FLIGHT",
    "SHARDQ_DATA_BUCKETS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
}
OUTPUTS = {
    "TaskQueueUrl",
    "TaskQueueArn",
    "TaskDlqUrl",
    "ResultsQueueUrl",
    "FastResultsQueueUrl",
    "ResultsDlqUrl",
    "ParkedResultsQueueUrl",
    "SplitterFunctionName",
    "AggregatorFunctionName",
    "DlqHandlerFunctionName",
    "ResultsDlqHandlerFunctionName",
    "JobTableName",
    "ArtifactBucketName",
    "WorkerPolicyArn",
    "DashboardUrl",
    "AlarmTopicArn",
}


@pytest.fixture(scope="module")
def synth(default_synth: Synth) -> Synth:
    return default_synth


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _getatt_target(value: Any) -> str:
    """Logical id referenced by {"Fn::GetAtt": [id, attr]} or {"Ref": id}."""
    if "Fn::GetAtt" in value:
        return value["Fn::GetAtt"][0]
    return value["Ref"]


def _statements(synth: Synth) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for logical_id, resource in synth.resources.items():
        prop = POLICY_DOCUMENT_PROPS.get(resource["Type"])
        if prop:
            for statement in resource["Properties"][prop]["Statement"]:
                found.append((logical_id, resource["Type"], statement))
        for inline in (
            resource.get("Properties", {}).get("Policies", []) if resource["Type"] == "AWS::IAM::Role" else []
        ):
            for statement in inline["PolicyDocument"]["Statement"]:
                found.append((logical_id, resource["Type"], statement))
    return found


# -- queues -------------------------------------------------------------------------------------


def test_task_queue_is_fifo_with_content_based_deduplication(synth: Synth) -> None:
    queue = synth.resources["TaskQueue"]["Properties"]
    assert queue["FifoQueue"] is True
    assert queue["ContentBasedDeduplication"] is True
    assert queue["VisibilityTimeout"] == 300  # context default: the worker lease, extended by heartbeats
    assert "DeduplicationScope" not in queue  # high-throughput FIFO is opt-in


def test_each_redrive_policy_targets_its_own_dlq_and_the_task_dlq_is_fifo(synth: Synth) -> None:
    for source, dlq in (
        ("TaskQueue", "TaskDlq"),
        ("ResultsQueue", "ResultsDlq"),
        ("FastResultsQueue", "ResultsDlq"),
    ):
        target = Capture()
        synth.template.has_resource_properties(
            "AWS::SQS::Queue",
            {
                "QueueName": Match.absent(),
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": [target, "Arn"]},
                    "maxReceiveCount": 5,
                },
                "VisibilityTimeout": synth.resources[source]["Properties"]["VisibilityTimeout"],
                "FifoQueue": True if source == "TaskQueue" else Match.absent(),
            },
        )
        seen = {target.as_string()}
        while target.next():
            seen.add(target.as_string())
        assert dlq in seen
        assert (
            _getatt_target(synth.resources[source]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
            == dlq
        )
    assert synth.resources["TaskDlq"]["Properties"]["FifoQueue"] is True
    assert "FifoQueue" not in synth.resources["ResultsDlq"]["Properties"]
    # Exactly the three source queues redrive (both results queues into the results DLQ), and no DLQ
    # redrives anywhere.
    redriving = {k for k, q in synth.of_type("AWS::SQS::Queue").items() if "RedrivePolicy" in q["Properties"]}
    assert redriving == {"TaskQueue", "ResultsQueue", "FastResultsQueue"}


def test_dlqs_keep_messages_14_days(synth: Synth) -> None:
    for dlq in ("TaskDlq", "ResultsDlq", "SplitterFailureQueue", "ParkedResults"):
        assert synth.resources[dlq]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_every_queue_is_encrypted_and_denies_non_tls_access(synth: Synth) -> None:
    queues = synth.of_type("AWS::SQS::Queue")
    assert len(queues) == 8
    tls_denied: set[str] = set()
    for policy in synth.of_type("AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement["Effect"] == "Deny"
                and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                and statement["Principal"] == {"AWS": "*"}
            ):
                tls_denied.update(_getatt_target(q) for q in policy["Properties"]["Queues"])
    for logical_id, queue in queues.items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, logical_id
    assert tls_denied == set(queues)


def test_every_sqs_event_source_reports_batch_item_failures_and_visibility_covers_6x_timeout(
    synth: Synth,
) -> None:
    mappings = synth.of_type("AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 4
    for logical_id, mapping in mappings.items():
        props = mapping["Properties"]
        queue = synth.resources[_getatt_target(props["EventSourceArn"])]
        function = synth.resources[_getatt_target(props["FunctionName"])]
        assert queue["Type"] == "AWS::SQS::Queue", logical_id
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], logical_id
        assert queue["Properties"]["VisibilityTimeout"] >= 6 * function["Properties"]["Timeout"], logical_id
        assert props["ScalingConfig"]["MaximumConcurrency"] >= 2, logical_id


def test_aggregator_takes_large_batches_from_the_results_queue(synth: Synth) -> None:
    synth.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": ["ResultsQueue", "Arn"]},
            "BatchSize": 100,
            "MaximumBatchingWindowInSeconds": 5,
            "ScalingConfig": {"MaximumConcurrency": 5},
        },
    )
    synth.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"EventSourceArn": {"Fn::GetAtt": ["TaskDlq", "Arn"]}, "BatchSize": 10},
    )


def test_results_dlq_is_consumed_by_the_results_dlq_handler(synth: Synth) -> None:
    # Issue #22: nothing read the results DLQ, so a job whose result died there waited forever.
    fn = synth.stack.get_logical_id(synth.stack.functions.results_dlq_handler.node.default_child)  # type: ignore[arg-type]
    function = Capture()
    synth.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": ["ResultsDlq", "Arn"]},
            "FunctionName": {"Ref": function},
            "BatchSize": 10,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": 2},
        },
    )
    assert function.as_string() == fn
    assert synth.resources[fn]["Properties"]["Handler"] == "lambdas.results_dlq_handler.handler"
    # Its visibility covers 6 x the handler's timeout (a failed record is not redelivered mid-run).
    timeout = synth.resources[fn]["Properties"]["Timeout"]
    assert synth.resources["ResultsDlq"]["Properties"]["VisibilityTimeout"] == 6 * timeout


def test_parked_results_queue_is_written_by_the_results_dlq_handler_alone(synth: Synth) -> None:
    # Issue #22: a dead result no job can record is parked at once with its reason, where people
    # read it (`shardq dlq show`), instead of going round the DLQ's consumer unseen for its life.
    fn = synth.stack.get_logical_id(synth.stack.functions.results_dlq_handler.node.default_child)  # type: ignore[arg-type]
    env = synth.resources[fn]["Properties"]["Environment"]["Variables"]
    assert env["SHARDQ_PARKED_RESULTS_QUEUE_URL"] == {"Ref": "ParkedResults"}
    # Only the results DLQ handler's role may send to it; nobody consumes it.
    senders = set()
    for logical_id, _, statement in _statements(synth):
        targets = {
            _getatt_target(r)
            for r in _as_list(statement.get("Resource"))
            if isinstance(r, dict) and ("Ref" in r or "Fn::GetAtt" in r)
        }
        if "ParkedResults" in targets and statement["Effect"] == "Allow":
            assert set(_as_list(statement["Action"])) <= {
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
            }, statement
            senders.add(logical_id)
    role = _getatt_target(synth.resources[fn]["Properties"]["Role"])
    policies = {
        k for k, r in synth.of_type("AWS::IAM::Policy").items() if {"Ref": role} in r["Properties"]["Roles"]
    }
    assert senders and senders <= policies, (senders, policies)
    parked = synth.resources["ParkedResults"]["Properties"]
    assert "RedrivePolicy" not in parked and "FifoQueue" not in parked
    outputs = synth.template.to_json()["Outputs"]
    assert outputs["ParkedResultsQueueUrl"]["Value"] == {"Ref": "ParkedResults"}
    assert "shardq dlq show" in outputs["ParkedResultsQueueUrl"]["Description"]


def test_task_queue_has_no_lambda_consumer(synth: Synth) -> None:
    sources = {
        _getatt_target(m["Properties"]["EventSourceArn"])
        for m in synth.of_type("AWS::Lambda::EventSourceMapping").values()
    }
    assert sources == {"ResultsQueue", "FastResultsQueue", "TaskDlq", "ResultsDlq"}


# -- job store ----------------------------------------------------------------------------------


def test_job_table(synth: Synth) -> None:
    table = synth.resources["JobTable"]
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    synth.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "by_status",
                    "KeySchema": [
                        {"AttributeName": "status", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    # Sparse: result items alone carry recorded_at; the dead task's body stays out.
                    "IndexName": "by_recorded",
                    "KeySchema": [
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "recorded_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {
                        "ProjectionType": "INCLUDE",
                        "NonKeyAttributes": ["outcome", "result", "source", "receive_count"],
                    },
                },
            ],
            "AttributeDefinitions": Match.array_with(
                [
                    {"AttributeName": "status", "AttributeType": "S"},
                    {"AttributeName": "recorded_at", "AttributeType": "S"},
                ]
            ),
        },
    )


def test_artifact_bucket(synth: Synth) -> None:
    bucket = synth.resources["ArtifactBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    props = bucket["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7
    }
    assert "expire-job-artifacts" not in rules  # opt-in via artifact_expiry_days
    # Task checkpoints expire on their own: the backstop for a job whose finalize never deleted them.
    assert rules["expire-task-checkpoints"] == {
        "Id": "expire-task-checkpoints",
        "Prefix": checkpoint_keys.ROOT,
        "ExpirationInDays": checkpoint_keys.EXPIRE_DAYS,
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "Status": "Enabled",
    }


def test_every_bucket_blocks_public_access_and_requires_tls(synth: Synth) -> None:
    buckets = synth.of_type("AWS::S3::Bucket")
    assert set(buckets) == {"ArtifactBucket", "AccessLogBucket"}
    tls_denied = set()
    for policy in synth.of_type("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement["Condition"] == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                tls_denied.add(policy["Properties"]["Bucket"]["Ref"])
    for logical_id, bucket in buckets.items():
        assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, logical_id
        assert bucket["DeletionPolicy"] == "Retain", logical_id
    assert tls_denied == set(buckets)


# -- functions ----------------------------------------------------------------------------------


def test_every_function_is_python314_arm64_traced_with_its_own_log_group(synth: Synth) -> None:
    functions = synth.of_type("AWS::Lambda::Function")
    assert len(functions) == 5
    log_groups = synth.of_type("AWS::Logs::LogGroup")
    handlers = set()
    for logical_id, fn in functions.items():
        props = fn["Properties"]
        handlers.add(props["Handler"])
        assert props["Runtime"] == "python3.14", logical_id
        assert props["Architectures"] == ["arm64"], logical_id
        assert props["TracingConfig"] == {"Mode": "Active"}, logical_id
        assert props["MemorySize"] >= 256, logical_id
        assert set(props["Environment"]["Variables"]) >= ENV_VARS, logical_id
        log_group = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert log_groups[log_group]["Properties"]["RetentionInDays"] == 30
        assert props["Layers"] == [
            {
                "Fn::Sub": "arn:aws:lambda:${AWS::Region}:017000801446:layer:"
                "AWSLambdaPowertoolsPythonV3-python314-arm64:38"
            }
        ]
    assert handlers == {
        "lambdas.splitter.handler",
        "lambdas.aggregator.handler",
        "lambdas.dlq_handler.handler",
        "lambdas.results_dlq_handler.handler",
        "lambdas.pipeline.handler",
    }
    assert len(log_groups) == 5


def test_environment_values(synth: Synth) -> None:
    env = synth.resources[synth.stack.get_logical_id(synth.stack.functions.dlq_handler.node.default_child)]  # type: ignore[arg-type]
    variables = env["Properties"]["Environment"]["Variables"]
    assert variables["SHARDQ_JOB_TABLE"] == {"Ref": "JobTable"}
    assert variables["SHARDQ_TASK_QUEUE_URL"] == {"Ref": "TaskQueue"}
    assert variables["SHARDQ_RESULTS_QUEUE_URL"] == {"Ref": "ResultsQueue"}
    assert variables["SHARDQ_ARTIFACT_BUCKET"] == {"Ref": "ArtifactBucket"}
    assert variables["SHARDQ_EVENT_BUS_NAME"] == "default"
    assert variables["SHARDQ_JOB_TTL_DAYS"] == "90"
    assert variables["SHARDQ_FANOUT_IN_FLIGHT"] == "8"
    assert variables["SHARDQ_DATA_BUCKETS"] == {"Ref": "ArtifactBucket"}  # the joined list of one
    assert variables["SHARDQ_MAX_RECEIVE_COUNT"] == "5"
    assert variables["POWERTOOLS_SERVICE_NAME"] == "shardq"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "shardq"
    assert variables["LOG_LEVEL"] == "INFO"


def test_splitter_async_failures_go_to_an_encrypted_destination_queue(synth: Synth) -> None:
    synth.template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "DestinationConfig": {
                "OnFailure": {"Destination": {"Fn::GetAtt": ["SplitterFailureQueue", "Arn"]}}
            },
            "MaximumRetryAttempts": 2,
            "MaximumEventAgeInSeconds": 3600,
        },
    )


def test_splitter_may_invoke_itself_without_a_dependency_cycle(synth: Synth) -> None:
    stack = synth.stack
    splitter_id = stack.get_logical_id(stack.functions.splitter.node.default_child)  # type: ignore[arg-type]
    policy_id = stack.get_logical_id(stack.functions.splitter_self_invoke_policy.node.default_child)  # type: ignore[arg-type]
    policy = synth.resources[policy_id]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "lambda:InvokeFunction"
    assert statement["Resource"] == {"Fn::GetAtt": [splitter_id, "Arn"]}
    role_id = synth.resources[splitter_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    assert policy["Properties"]["Roles"] == [{"Ref": role_id}]
    # The policy depends on the function (GetAtt); the function must not depend on the policy.
    assert policy_id not in synth.resources[splitter_id].get("DependsOn", [])
    # ...and only the aggregator and DLQ handler (continuations of big next rounds) invoke it too,
    # by its unqualified ARN, with its name in SHARDQ_SPLITTER_FUNCTION.
    fns = stack.functions
    may_invoke = {policy_id} | {
        stack.get_logical_id(fn.role.node.try_find_child("DefaultPolicy").node.default_child)  # type: ignore[union-attr, arg-type]
        for fn in (fns.aggregator, fns.dlq_handler, fns.results_dlq_handler, fns.pipeline)
    }
    invokers = set()
    for logical_id, _, st in _statements(synth):
        if "lambda:InvokeFunction" in _as_list(st.get("Action", [])):
            assert st["Resource"] == {"Fn::GetAtt": [splitter_id, "Arn"]}
            invokers.add(logical_id)
    assert invokers == may_invoke
    for fn in (fns.aggregator, fns.dlq_handler, fns.results_dlq_handler):
        env = synth.resources[stack.get_logical_id(fn.node.default_child)]["Properties"]["Environment"]  # type: ignore[arg-type]
        assert env["Variables"]["SHARDQ_SPLITTER_FUNCTION"] == {"Ref": splitter_id}


def test_data_plane_grants(synth: Synth) -> None:
    def actions_of(function: Any) -> set[str]:
        role = synth.stack.get_logical_id(function.role.node.default_child)
        found: set[str] = set()
        for resource in synth.of_type("AWS::IAM::Policy").values():
            if {"Ref": role} in resource["Properties"]["Roles"]:
                for st in resource["Properties"]["PolicyDocument"]["Statement"]:
                    found.update(_as_list(st["Action"]))
        return found

    fns = synth.stack.functions
    for fn in fns.all_functions:
        actions = actions_of(fn)
        assert {
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "sqs:SendMessage",
            "s3:PutObject",
        } <= actions
        assert not any(a.startswith("s3:DeleteObject") for a in actions)
    assert "lambda:InvokeFunction" in actions_of(fns.splitter)
    for fn in (fns.aggregator, fns.dlq_handler, fns.results_dlq_handler):
        assert "sqs:ReceiveMessage" in actions_of(fn)  # from the event source
    for fn in fns.all_functions:  # the splitter ends a job whose round closed in ranges
        assert "events:PutEvents" in actions_of(fn)


def test_every_function_may_arm_a_round_deadline_on_the_results_queue(synth: Synth) -> None:
    # Whichever function starts a round with a deadline sends its tick to the results queue.
    results_arn = synth.stack.resolve(synth.stack.results.queue.queue_arn)
    for fn in synth.stack.functions.all_functions:
        role = synth.stack.get_logical_id(fn.role.node.default_child)
        targets = [
            target
            for resource in synth.of_type("AWS::IAM::Policy").values()
            if {"Ref": role} in resource["Properties"]["Roles"]
            for st in resource["Properties"]["PolicyDocument"]["Statement"]
            if "sqs:SendMessage" in _as_list(st["Action"])
            for target in _as_list(st["Resource"])
        ]
        assert results_arn in targets, fn.node.id


def test_put_events_is_scoped_to_the_default_bus(synth: Synth) -> None:
    for _, _, st in _statements(synth):
        if "events:PutEvents" in _as_list(st["Action"]):
            joined = st["Resource"]["Fn::Join"][1]
            assert joined[-1] == ":event-bus/default"


# -- IAM invariants -----------------------------------------------------------------------------


def test_no_statement_allows_wildcard_actions_or_principals(synth: Synth) -> None:
    """Over EVERY policy document in the template.

    Exceptions, each because AWS requires it:
    - xray:PutTraceSegments / PutTelemetryRecords need "Resource": "*" (no resource-level permissions);
    - a KMS key policy names its own key as "*" and keeps AWS's default statement giving the account
      root kms:* (without it the key becomes unmanageable);
    - TLS-only Deny statements use principal "*" and the service's wildcard action, on purpose.
    """
    checked = 0
    for logical_id, cfn_type, st in _statements(synth):
        checked += 1
        actions = _as_list(st.get("Action", []))
        principal = st.get("Principal")
        if st["Effect"] == "Deny":
            assert st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}, logical_id
            continue
        assert "*" not in actions, logical_id
        assert principal not in ("*", {"AWS": "*"}), logical_id
        wildcard_services = [a for a in actions if a.endswith(":*")]
        if cfn_type == "AWS::KMS::Key":
            if wildcard_services:
                assert wildcard_services == ["kms:*"], logical_id
                root = principal["AWS"]["Fn::Join"][1]
                assert root[-1] == ":root", logical_id
            continue
        assert not wildcard_services, (logical_id, actions)
        if "*" in _as_list(st.get("Resource", [])):
            assert set(actions) <= ACTIONS_WITHOUT_RESOURCE_LEVEL_PERMISSIONS, (logical_id, actions)
    assert checked > 20


# -- monitoring ---------------------------------------------------------------------------------


def test_alarm_topic_is_encrypted_and_tls_only(synth: Synth) -> None:
    ((topic_id, topic),) = synth.of_type("AWS::SNS::Topic").items()
    key_id = _getatt_target(topic["Properties"]["KmsMasterKeyId"])
    assert synth.resources[key_id]["Properties"]["EnableKeyRotation"] is True
    key_statements = synth.resources[key_id]["Properties"]["KeyPolicy"]["Statement"]
    assert any(st.get("Principal") == {"Service": "cloudwatch.amazonaws.com"} for st in key_statements)
    (policy,) = synth.of_type("AWS::SNS::TopicPolicy").values()
    assert policy["Properties"]["Topics"] == [{"Ref": topic_id}]
    assert any(
        st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
    )
    assert not synth.of_type("AWS::SNS::Subscription")  # alarm_email is opt-in


def test_alarms_cover_dlqs_task_age_and_lambda_failures(synth: Synth) -> None:
    alarms = synth.of_type("AWS::CloudWatch::Alarm").values()
    watched = set()
    for alarm in alarms:
        props = alarm["Properties"]
        topic = props["AlarmActions"]
        assert len(topic) == 1 and "Ref" in topic[0]
        assert props["TreatMissingData"] == "notBreaching"
        (dimension,) = props["Dimensions"]
        watched.add(
            (
                props["MetricName"],
                _getatt_target(dimension["Value"])
                if isinstance(dimension["Value"], dict) and "Fn::GetAtt" in dimension["Value"]
                else dimension["Value"].get("Ref")
                if isinstance(dimension["Value"], dict)
                else dimension["Value"],
            )
        )
    stack = synth.stack
    fn_id = {
        name: stack.get_logical_id(getattr(stack.functions, name).node.default_child)
        for name in ("splitter", "aggregator", "dlq_handler", "results_dlq_handler")
    }  # type: ignore[arg-type]
    assert ("ApproximateNumberOfMessagesVisible", "TaskDlq") in watched
    assert ("ApproximateNumberOfMessagesVisible", "ResultsDlq") in watched
    assert ("ApproximateNumberOfMessagesVisible", "ParkedResults") in watched
    assert ("ApproximateAgeOfOldestMessage", "TaskQueue") in watched
    assert ("Errors", fn_id["aggregator"]) in watched
    assert ("Throttles", fn_id["aggregator"]) in watched
    assert ("Errors", fn_id["splitter"]) in watched
    assert ("Errors", fn_id["results_dlq_handler"]) in watched
    synth.template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "ApproximateAgeOfOldestMessage",
            "Threshold": 3600,
            "ComparisonOperator": "GreaterThanThreshold",
        },
    )


def test_dashboard_shows_the_shardq_metrics(synth: Synth) -> None:
    (dashboard,) = synth.of_type("AWS::CloudWatch::Dashboard").values()
    body = str(dashboard["Properties"]["DashboardBody"])
    for metric in ("TasksEnqueued", "ResultsRecorded", "DuplicateResults", "JobsFinished", "RoundDuration"):
        assert f'"shardq","{metric}","service","shardq"' in body, metric
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible", "Duration"):
        assert metric in body


# -- outputs, names, tags -----------------------------------------------------------------------


def test_outputs_are_present_with_descriptions(synth: Synth) -> None:
    outputs = synth.template.to_json()["Outputs"]
    assert set(outputs) >= OUTPUTS
    for output_id in OUTPUTS:
        assert len(outputs[output_id]["Description"]) > 10, output_id
    assert outputs["WorkerPolicyArn"]["Export"] == {"Name": {"Fn::Sub": "${AWS::StackName}-WorkerPolicyArn"}}
    assert "Fn::Sub" in outputs["DashboardUrl"]["Value"]


def test_stateful_logical_ids_are_pinned(synth: Synth) -> None:
    expected = {
        "JobTable": "AWS::DynamoDB::Table",
        "ArtifactBucket": "AWS::S3::Bucket",
        "AccessLogBucket": "AWS::S3::Bucket",
        "TaskQueue": "AWS::SQS::Queue",
        "TaskDlq": "AWS::SQS::Queue",
        "ResultsQueue": "AWS::SQS::Queue",
        "ResultsDlq": "AWS::SQS::Queue",
        "SplitterFailureQueue": "AWS::SQS::Queue",
        "ParkedResults": "AWS::SQS::Queue",
        "FastResultsQueue": "AWS::SQS::Queue",
        "PipelineFailureQueue": "AWS::SQS::Queue",
    }
    assert {k: synth.resources[k]["Type"] for k in expected} == expected
    stateful = {"AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::SQS::Queue"}
    assert {k for k, r in synth.resources.items() if r["Type"] in stateful} == set(expected)


def test_no_hard_coded_physical_names(synth: Synth) -> None:
    name_props = (
        "QueueName",
        "TableName",
        "BucketName",
        "FunctionName",
        "TopicName",
        "RoleName",
        "ManagedPolicyName",
    )
    for logical_id, resource in synth.resources.items():
        for prop in name_props:
            # References (Ref/GetAtt) to generated names are fine; a literal string is a hard-coded name.
            assert not isinstance(resource.get("Properties", {}).get(prop), str), (logical_id, prop)


def test_stack_name_description_and_tags(synth: Synth) -> None:
    assert synth.stack.stack_name == "shardq"
    assert synth.template.to_json()["Description"].startswith("shardq:")
    tags = synth.resources["TaskQueue"]["Properties"]["Tags"]
    assert {"Key": "project", "Value": "shardq"} in tags


def test_the_outputs_carry_every_setting_the_lambdas_get(synth: Synth) -> None:
    # The CLI builds its Settings from the outputs (Settings.from_outputs), the Lambdas from their
    # environment (Settings.from_env): the two must name the same values, so cancel/retry from a
    # terminal finalize with cdk.json's TTL and check the same buckets as the splitter.
    from shardq.core.settings import Settings

    outputs = synth.template.to_json()["Outputs"]
    splitter_env = synth.stack.settings_environment
    for name, output_id in Settings.OUTPUTS.items():
        assert output_id in outputs, f"Settings.{name} has no stack output {output_id}"
        variable = Settings.ENV[name]
        if variable in splitter_env:
            resolved = synth.stack.resolve(splitter_env[variable])
            assert outputs[output_id]["Value"] == resolved, name
