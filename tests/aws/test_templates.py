"""Checks of the AWS deployment (deploy/aws): what the templates promise, what
deploy.sh --dry-run would call, and the storage and compute stacks created on moto's
CloudFormation, read back through the DynamoDB, ECS, Auto Scaling, EC2 and Logs APIs.

scripts/test-aws.sh runs this under scripts/with-moto.sh, which exports
AWS_ENDPOINT_URL (a throwaway moto_server). Without it the moto tests are skipped.

moto 5.2 quirks worked around here (each test says where):
- CloudFormation: no handler for AWS::ECS::CapacityProvider and
  AWS::ECS::ClusterCapacityProviderAssociations (skipped with a warning, Ref -> None);
  the test replays those two resources through the ECS API with the template's values.
- A CommaDelimitedList parameter's Default is not split into a list (passed values are),
  so the tests pass GpuInstanceTypes explicitly.
- DynamoDB from CloudFormation ignores PointInTimeRecoverySpecification and
  TimeToLiveSpecification and reads SSESpecification under the API's key name, so PITR,
  TTL and SSE are asserted on the template and through the DynamoDB API calls that set
  them, not read back from the stack's table.
- No Fn::Cidr, so the network stack is not created on moto (cfn-lint checks it).
"""

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deploy" / "aws" / "templates"
DEPLOY = ROOT / "deploy" / "aws" / "deploy.sh"
PARAMS_TEMPLATE = ROOT / "deploy" / "aws" / "parameters-template.json"
NESTED = ["network", "storage", "auth", "security", "compute", "frontend", "api"]
REGION = "us-east-1"


def template(name):
    return cfn_yaml.load(str(TEMPLATES / f"{name}.yaml"))


def resources(tpl, rtype):
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == rtype}


def as_list(x):
    return x if isinstance(x, list) else [x]


# ---------------------------------------------------------------- templates


def test_root_stack_nests_every_template_and_wires_parameters():
    main = template("main")
    stacks = resources(main, "AWS::CloudFormation::Stack")
    urls = sorted(s["Properties"]["TemplateURL"] for s in stacks.values())
    assert urls == sorted(f"./{n}.yaml" for n in NESTED)
    for stack in stacks.values():
        child = cfn_yaml.load(str(TEMPLATES / stack["Properties"]["TemplateURL"]))
        required = {
            k for k, v in child.get("Parameters", {}).items() if "Default" not in v
        }
        given = set(stack["Properties"].get("Parameters", {}))
        assert required <= given, (stack["Properties"]["TemplateURL"], required - given)
        assert given <= set(child["Parameters"])


def test_parameters_template_matches_the_root_stack():
    doc = json.loads(PARAMS_TEMPLATE.read_text())
    main_params = template("main")["Parameters"]
    params = doc["Parameters"]
    # Every key is a parameter of main.yaml (deploy fails on unknown ones) ...
    assert set(params) <= set(main_params), set(params) - set(main_params)
    # ... every parameter without a default is there, except the two deploy.sh sets ...
    required = {k for k, v in main_params.items() if "Default" not in v}
    assert required - set(params) == {"CorralImage", "RunnerImage"}
    # ... and each one is documented.
    assert set(doc["_Parameters"]) == set(params)
    for key, value in params.items():
        spec = main_params[key]
        assert isinstance(value, str), key
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], key
        if "AllowedPattern" in spec and spec["Type"] == "String":
            assert re.fullmatch(spec["AllowedPattern"], value), key


def test_storage_is_on_demand_encrypted_and_recoverable():
    table = template("storage")["Resources"]["StoreTable"]
    props = table["Properties"]
    assert table["DeletionPolicy"] == "Retain"
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert [g["IndexName"] for g in props["GlobalSecondaryIndexes"]] == ["GSI1", "GSI2", "GSI3"]
    # The key design the DynamoDB store is written against is documented in the file.
    text = (TEMPLATES / "storage.yaml").read_text()
    for entity in ["user", "api key", "refresh session", "audit entry", "instance",
                   "instance event", "usage (hourly)"]:
        assert f"# {entity} " in text, entity


def test_cognito_pool_has_the_briefs_password_policy_and_optional_totp():
    auth = template("auth")["Resources"]
    pool = auth["UserPool"]["Properties"]
    policy = pool["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] == 8
    assert all(policy[k] is True for k in
               ["RequireUppercase", "RequireLowercase", "RequireNumbers", "RequireSymbols"])
    assert pool["MfaConfiguration"] == "OPTIONAL"
    assert pool["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    assert pool["AutoVerifiedAttributes"] == ["email"]
    groups = {g["Properties"]["GroupName"] for g in resources(
        template("auth"), "AWS::Cognito::UserPoolGroup").values()}
    assert groups == {"admin", "user", "viewer"}
    assert auth["AppClient"]["Properties"]["GenerateSecret"] is False


def statements(role):
    """Every statement a role can have; a conditional one (Fn::If, e.g. the KMS key's)
    counts with each of its branches that is a statement."""
    for policy in role["Properties"].get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in st:
                yield from (b for b in st["Fn::If"][1:] if "Effect" in b)
            else:
                yield st


def test_iam_is_least_privilege():
    sec = template("security")
    roles = resources(sec, "AWS::IAM::Role")
    # Actions that AWS only grants on "*" (no resource-level permissions), and list calls
    # narrowed by a cluster condition.
    star_ok = {"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition",
               "ecs:RegisterTaskDefinition", "ecs:ListTasks", "ecs:ListServices"}
    for name, role in roles.items():
        for st in statements(role):
            assert st["Effect"] == "Allow"
            for action in as_list(st["Action"]):
                assert "*" not in action, (name, action)
            if st["Resource"] == "*":
                assert set(as_list(st["Action"])) <= star_ok, (name, st)
    cp = list(statements(roles["ControlPlaneTaskRole"]))
    by_sid = {st["Sid"]: st for st in cp}
    assert "dynamodb:Scan" not in by_sid["StoreItems"]["Action"]
    assert by_sid["PassModelRoles"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert "ecs:cluster" in by_sid["RunModelTasks"]["Condition"]["ArnEquals"]
    assert by_sid["ListModelTasks"]["Condition"]["ArnEquals"]
    assert by_sid["ListModelServices"]["Condition"]["ArnEquals"]
    # The model tasks' own role can do nothing.
    assert "Policies" not in roles["ModelTaskRole"]["Properties"]


def test_security_groups_chain_internet_alb_control_plane_models():
    sec = template("security")["Resources"]
    alb_in = sec["AlbSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert sorted(r["FromPort"] for r in alb_in) == [80, 443]
    ingress = resources(template("security"), "AWS::EC2::SecurityGroupIngress")
    assert {(r["Properties"]["GroupId"]["Ref"], r["Properties"]["SourceSecurityGroupId"]["Ref"])
            for r in ingress.values()} == {
        ("ControlPlaneSecurityGroup", "AlbSecurityGroup"),
        ("ModelSecurityGroup", "ControlPlaneSecurityGroup"),
    }
    model_rule = ingress["ModelFromControlPlaneIngress"]["Properties"]
    assert model_rule["FromPort"] == {"Ref": "ModelPort"}
    assert template("security")["Parameters"]["ModelPort"]["Default"] == 11434
    for sg in ["ControlPlaneSecurityGroup", "ModelSecurityGroup", "GpuInstanceSecurityGroup"]:
        assert "SecurityGroupIngress" not in sec[sg]["Properties"], sg


def test_api_is_https_with_redirect_and_health_check():
    api = template("api")["Resources"]
    assert api["HttpsListener"]["Properties"]["Protocol"] == "HTTPS"
    assert api["HttpsListener"]["Properties"]["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    redirect = api["HttpRedirectListener"]["Properties"]["DefaultActions"][0]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert api["TargetGroup"]["Properties"]["HealthCheckPath"] == "/api/health"
    container = api["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    env = {e["Name"] for e in container["Environment"]}
    assert {"CORRAL_DATABASE_URL", "CORRAL_PUBLIC_URL", "CORRAL_ECS_CLUSTER",
            "CORRAL_ECS_SUBNETS", "CORRAL_ECS_SECURITY_GROUPS", "CORRAL_ECS_LOG_GROUP",
            "CORRAL_ECS_EXECUTION_ROLE_ARN", "CORRAL_COGNITO_USER_POOL_ID"} <= env
    assert container["Secrets"] == [{"Name": "CORRAL_JWT_SECRET",
                                     "ValueFrom": {"Ref": "JwtSecretArn"}}]
    assert "CORRAL_JWT_SECRET" not in env
    service = api["Service"]["Properties"]
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_issue13_item15_production_hardening():
    """TLS 1.2+, access logs on by default, one optional KMS key for every encrypted
    resource, Container Insights on; checkov runs in scripts/test-aws.sh."""
    main = template("main")["Parameters"]
    assert main["AccessLogs"]["Default"] == "enabled"
    assert main["ContainerInsights"]["Default"] == "enabled"
    assert main["KmsKeyArn"]["Default"] == ""
    api = template("api")["Resources"]
    assert api["HttpsListener"]["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")
    # Port 80 only redirects.
    assert [a["Type"] for a in api["HttpRedirectListener"]["Properties"]["DefaultActions"]] == ["redirect"]
    attrs = {a["Key"]: a["Value"] for a in api["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
             if "Key" in a}
    assert attrs["access_logs.s3.enabled"] == {"Fn::If": ["HasAccessLogs", "true", "false"]}
    fe = template("frontend")
    cert = fe["Resources"]["Distribution"]["Properties"]["DistributionConfig"]["ViewerCertificate"]
    assert cert["Fn::If"][1]["MinimumProtocolVersion"] == "TLSv1.2_2021"
    dist = fe["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    assert dist["Logging"]["Fn::If"][0] == "HasAccessLogs"
    log_bucket = fe["Resources"]["LogBucket"]["Properties"]
    # CloudFront's standard logs are written with object ACLs.
    assert log_bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerPreferred"}]
    ui_logs = fe["Resources"]["UiBucket"]["Properties"]["LoggingConfiguration"]
    assert ui_logs["Fn::If"][0] == "HasAccessLogs"
    # Every encrypted resource takes the key when one is given.
    kms = {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]}
    table = template("storage")["Resources"]["StoreTable"]["Properties"]["SSESpecification"]
    assert table["KMSMasterKeyId"] == kms
    assert template("security")["Resources"]["JwtSecret"]["Properties"]["KmsKeyId"] == kms
    compute = template("compute")["Resources"]
    for group in ("ControlPlaneLogGroup", "ModelLogGroup"):
        assert compute[group]["Properties"]["KmsKeyId"] == kms, group
    for stack in ("Storage", "Security", "Compute"):
        given = template("main")["Resources"][stack]["Properties"]["Parameters"]
        assert given["KmsKeyArn"] == {"Ref": "KmsKeyArn"}, stack


def test_cloudfront_serves_the_ui_privately_and_forwards_the_api_uncached():
    fe = template("frontend")["Resources"]
    dist = fe["Distribution"]["Properties"]["DistributionConfig"]
    origins = {o["Id"]: o for o in dist["Origins"]}
    assert origins["ui"]["OriginAccessControlId"] == {"Fn::GetAtt": ["OriginAccessControl", "Id"]}
    assert origins["api"]["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    behaviours = {b["PathPattern"]: b for b in dist["CacheBehaviors"]}
    assert set(behaviours) == {"/api/*", "/v1/*", "/ollama/*", "/i/*"}
    for b in behaviours.values():
        assert b["TargetOriginId"] == "api"
        assert b["CachePolicyId"] == {"Fn::FindInMap": ["ManagedPolicies", "Cache", "CachingDisabled"]}
        assert b["Compress"] is False
        assert "POST" in b["AllowedMethods"]
    # SPA routing by a function on the UI behaviour only, never distribution-wide error
    # pages (they would turn the API's 403/404 into index.html with 200).
    assert "CustomErrorResponses" not in dist
    assert dist["DefaultCacheBehavior"]["FunctionAssociations"][0]["EventType"] == "viewer-request"
    block = fe["UiBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    assert all(block.values())


# ---------------------------------------------------------------- deploy.sh --dry-run


def tool_dir(tmp_path, tools):
    """A PATH with only these tools: no aws, no docker, no node."""
    bin_dir = tmp_path / "bin"
    if bin_dir.exists():
        return str(bin_dir)
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


BASIC_TOOLS = ["bash", "cat", "dirname", "git", "head", "jq", "mktemp", "rm"]


def run_deploy(tmp_path, *args, tools=BASIC_TOOLS):
    env = {"PATH": tool_dir(tmp_path, tools), "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(DEPLOY), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def dry_lines(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("DRY-RUN: ")]
    return [l[len("DRY-RUN: "):] for l in lines]


def test_dry_run_prints_every_call_without_aws_or_docker(tmp_path):
    out = run_deploy(tmp_path, "--dry-run", "--parameters", str(PARAMS_TEMPLATE),
                     "--image-tag", "t1")
    assert out.returncode == 0, out.stderr
    assert "AWS CLI v2 is not installed" in out.stderr
    calls = dry_lines(out.stdout)
    # Only AWS and docker calls (and the UI build) are printed, in this order.
    assert all(re.match(r"(aws |docker |scripts/build-ui\.sh$)", c) for c in calls), calls
    registry = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
    expected = [
        "aws sts get-caller-identity --region us-east-1",
        "scripts/build-ui.sh",
        "aws ecr describe-repositories --region us-east-1 --repository-names corral/corral",
        "aws ecr create-repository --region us-east-1 --repository-name corral/corral ",
        "aws ecr describe-repositories --region us-east-1 --repository-names corral/corral-runner",
        "aws ecr create-repository --region us-east-1 --repository-name corral/corral-runner ",
        f"aws ecr get-login-password --region us-east-1 | docker login --username AWS --password-stdin {registry}",
        f"docker build --platform linux/amd64 --file deploy/docker/corral.Dockerfile --tag {registry}/corral/corral:t1 .",
        f"docker push {registry}/corral/corral:t1",
        f"docker build --platform linux/amd64 --file deploy/docker/corral-runner.Dockerfile --build-arg FETCH_MODEL=0 --tag {registry}/corral/corral-runner:t1 .",
        f"docker push {registry}/corral/corral-runner:t1",
        "aws s3api head-bucket --region us-east-1 --bucket corral-cfn-111122223333-us-east-1",
        "aws s3api create-bucket --region us-east-1 --bucket corral-cfn-111122223333-us-east-1",
        "aws s3api put-public-access-block --region us-east-1 --bucket corral-cfn-111122223333-us-east-1 ",
        "aws cloudformation package --region us-east-1 --template-file deploy/aws/templates/main.yaml --s3-bucket corral-cfn-111122223333-us-east-1 --s3-prefix corral ",
        "aws cloudformation deploy --region us-east-1 --stack-name corral ",
        "aws cloudformation describe-stacks --region us-east-1 --stack-name corral ",
        "aws s3 sync ui/dist/assets 's3://<UiBucketName>/assets' --region us-east-1 --cache-control public,max-age=31536000,immutable",
        "aws s3 sync ui/dist 's3://<UiBucketName>' --region us-east-1 --exclude 'assets/*' --delete --cache-control no-cache",
        "aws cloudfront create-invalidation --distribution-id '<DistributionId>' --paths '/*'",
    ]
    assert len(calls) == len(expected), "\n".join(calls)
    for call, prefix in zip(calls, expected):
        assert call.startswith(prefix), (call, prefix)
    deploy = next(c for c in calls if c.startswith("aws cloudformation deploy"))
    assert "--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND" in deploy
    assert f"CorralImage={registry}/corral/corral:t1" in deploy
    assert f"RunnerImage={registry}/corral/corral-runner:t1" in deploy
    assert "ApiDomainName=corral-api.example.com" in deploy
    assert "GpuInstanceTypes=g4dn.xlarge,g5.xlarge,g5.2xlarge" in deploy
    assert "Corral is at: https://" in out.stdout


def test_dry_run_honours_region_and_stack_name(tmp_path):
    out = run_deploy(tmp_path, "--dry-run", "--parameters", str(PARAMS_TEMPLATE),
                     "--region", "eu-west-1", "--stack-name", "corral-demo", "--skip-ui")
    assert out.returncode == 0, out.stderr
    calls = dry_lines(out.stdout)
    assert not any("build-ui" in c or "s3 sync" in c or "cloudfront" in c for c in calls)
    aws_calls = [c for c in calls if c.startswith("aws ")]
    assert all("--region eu-west-1" in c for c in aws_calls), aws_calls
    assert any("--create-bucket-configuration LocationConstraint=eu-west-1" in c for c in calls)
    assert any(c.startswith("aws cloudformation deploy --region eu-west-1 --stack-name corral-demo")
               for c in calls)


def test_real_run_explains_missing_tools_and_parameters(tmp_path):
    out = run_deploy(tmp_path, "--parameters", str(PARAMS_TEMPLATE))
    assert out.returncode != 0
    assert "missing: the AWS CLI v2 is not installed" in out.stderr
    assert "missing: Docker is not installed" in out.stderr
    assert "Node.js" in out.stderr
    out = run_deploy(tmp_path, "--dry-run", "--parameters", str(tmp_path / "nope.json"))
    assert out.returncode != 0
    assert "cp deploy/aws/parameters-template.json deploy/aws/parameters.json" in out.stderr
    bogus = run_deploy(tmp_path, "--bogus")
    assert bogus.returncode == 1 and "unknown argument: --bogus" in bogus.stderr
    help_out = run_deploy(tmp_path, "--help")
    assert help_out.returncode == 0 and "--dry-run" in help_out.stdout


# ---------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def aws():
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        pytest.skip("AWS_ENDPOINT_URL is not set: run through scripts/test-aws.sh (moto)")
    import boto3

    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                    region_name=REGION)
    return lambda service: session.client(service, endpoint_url=endpoint)


def create_stack(aws, name, tpl, params):
    cfn = aws("cloudformation")
    cfn.create_stack(StackName=name, TemplateBody=(TEMPLATES / f"{tpl}.yaml").read_text(),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
                     Capabilities=["CAPABILITY_IAM"])
    cfn.get_waiter("stack_create_complete").wait(StackName=name,
                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_storage_stack_on_moto(aws):
    env = f"st{uuid.uuid4().hex[:6]}"
    outputs = create_stack(aws, f"{env}-storage", "storage", {"EnvironmentName": env})
    assert outputs["TableName"] == f"{env}-store"
    ddb = aws("dynamodb")
    table = ddb.describe_table(TableName=outputs["TableName"])["Table"]
    assert table["TableArn"] == outputs["TableArn"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "PK", "KeyType": "HASH"},
                                  {"AttributeName": "SK", "KeyType": "RANGE"}]
    indexes = {g["IndexName"]: g for g in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"GSI1", "GSI2", "GSI3"}
    for name, index in indexes.items():
        assert index["KeySchema"] == [{"AttributeName": f"{name}PK", "KeyType": "HASH"},
                                      {"AttributeName": f"{name}SK", "KeyType": "RANGE"}]
        assert index["Projection"]["ProjectionType"] == "ALL"
    assert str(table["DeletionProtectionEnabled"]).lower() == "true"
    # moto's CloudFormation drops TTL and PITR: apply the template's settings through the
    # API (the calls the stack makes on AWS) to check they are accepted as written.
    props = template("storage")["Resources"]["StoreTable"]["Properties"]
    ttl = props["TimeToLiveSpecification"]
    ddb.update_time_to_live(TableName=outputs["TableName"], TimeToLiveSpecification=ttl)
    assert ddb.describe_time_to_live(TableName=outputs["TableName"])[
        "TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    ddb.update_continuous_backups(TableName=outputs["TableName"],
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    backups = ddb.describe_continuous_backups(TableName=outputs["TableName"])
    assert backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"][
        "PointInTimeRecoveryStatus"] == "ENABLED"
    # The key design works: a conditional put keeps e-mail addresses unique.
    put = dict(TableName=outputs["TableName"], ConditionExpression="attribute_not_exists(PK)",
               Item={"PK": {"S": "EMAIL#a@example.com"}, "SK": {"S": "EMAIL"}, "user_id": {"S": "u1"}})
    ddb.put_item(**put)
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(**put)


def test_compute_stack_on_moto(aws):
    env = f"ct{uuid.uuid4().hex[:6]}"
    ec2, iam = aws("ec2"), aws("iam")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
    sg = ec2.create_security_group(GroupName=f"{env}-gpu", Description="gpu", VpcId=vpc)["GroupId"]
    profile = iam.create_instance_profile(InstanceProfileName=f"{env}-gpu")["InstanceProfile"]["Arn"]
    types = ["g4dn.xlarge", "g5.xlarge", "g5.2xlarge"]
    cluster_name = f"{env}-cluster"
    outputs = create_stack(aws, f"{env}-compute", "compute", {
        "EnvironmentName": env,
        "ClusterName": cluster_name,
        "PrivateSubnetIds": ",".join(subnets),
        "GpuInstanceSecurityGroupId": sg,
        "GpuInstanceProfileArn": profile,
        "GpuInstanceTypes": ",".join(types),  # moto does not split the list's Default
        "ControlPlaneLogGroupName": f"/corral/{env}/control-plane",
        "ModelLogGroupName": f"/corral/{env}/models",
        "LogRetentionDays": "14",
    })
    ecs, logs, asg = aws("ecs"), aws("logs"), aws("autoscaling")

    cluster = ecs.describe_clusters(clusters=[cluster_name])["clusters"][0]
    assert cluster["status"] == "ACTIVE"
    assert outputs["ClusterName"] == cluster_name
    assert outputs["ClusterArn"] == cluster["clusterArn"]

    groups = {g["logGroupName"]: g for g in logs.describe_log_groups(
        logGroupNamePrefix=f"/corral/{env}/")["logGroups"]}
    assert set(groups) == {f"/corral/{env}/control-plane", f"/corral/{env}/models"}
    assert all(g["retentionInDays"] == 14 for g in groups.values())

    # One launch template: the ECS GPU AMI from SSM, IMDSv2, the cluster in the user data.
    lt = ec2.describe_launch_template_versions(LaunchTemplateName=f"{env}-gpu")[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    ssm = aws("ssm")
    ami = ssm.get_parameter(Name=template("compute")["Parameters"]["GpuAmiId"]["Default"])
    assert lt["ImageId"] == ami["Parameter"]["Value"]
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    assert lt["IamInstanceProfile"]["Arn"] == profile
    import base64
    user_data = base64.b64decode(lt["UserData"]).decode()
    assert f"ECS_CLUSTER={cluster_name}" in user_data
    assert "ECS_ENABLE_GPU_SUPPORT=true" in user_data

    # One Auto Scaling group per GPU type, scaling from zero.
    names = outputs["GpuAutoScalingGroupNames"].split(",")[: len(types)]
    described = {g["AutoScalingGroupName"]: g for g in
                 asg.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]}
    for name, itype in zip(names, types):
        group = described[name]
        assert group["MinSize"] == 0 and group["MaxSize"] == 2
        overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
        assert overrides == [{"InstanceType": itype}]
        assert set(group["VPCZoneIdentifier"].split(",")) == set(subnets)
    stack_types = {r["LogicalResourceId"] for r in aws("cloudformation").list_stack_resources(
        StackName=f"{env}-compute")["StackResourceSummaries"]}
    assert "GpuAutoScalingGroup4" not in stack_types  # only as many groups as types

    # moto has no CloudFormation handler for the capacity providers and their association
    # with the cluster: replay the template's two resource types through the ECS API.
    res = template("compute")["Resources"]
    providers = []
    for n, name in enumerate(names, start=1):
        spec = res[f"GpuCapacityProvider{n}"]["Properties"]["AutoScalingGroupProvider"]
        arn = described[name]["AutoScalingGroupARN"]
        cp = ecs.create_capacity_provider(
            name=f"{env}-gpu-{n}",
            autoScalingGroupProvider={
                "autoScalingGroupArn": arn,
                "managedScaling": {
                    "status": spec["ManagedScaling"]["Status"],
                    "targetCapacity": spec["ManagedScaling"]["TargetCapacity"],
                    "minimumScalingStepSize": spec["ManagedScaling"]["MinimumScalingStepSize"],
                    "maximumScalingStepSize": spec["ManagedScaling"]["MaximumScalingStepSize"],
                    "instanceWarmupPeriod": spec["ManagedScaling"]["InstanceWarmupPeriod"],
                },
                "managedTerminationProtection": spec["ManagedTerminationProtection"],
            },
        )["capacityProvider"]
        providers.append(cp["name"])
    assoc = res["ClusterCapacityProviders"]["Properties"]
    fixed = [p for p in assoc["CapacityProviders"] if isinstance(p, str)]
    assert fixed == ["FARGATE", "FARGATE_SPOT"]
    ecs.put_cluster_capacity_providers(
        cluster=cluster_name,
        capacityProviders=fixed + providers,
        defaultCapacityProviderStrategy=[
            {"capacityProvider": s["CapacityProvider"], "weight": s["Weight"], "base": s["Base"]}
            for s in assoc["DefaultCapacityProviderStrategy"]],
    )
    cluster = ecs.describe_clusters(clusters=[cluster_name])["clusters"][0]
    assert cluster["capacityProviders"] == ["FARGATE", "FARGATE_SPOT", *providers]
    assert cluster["defaultCapacityProviderStrategy"][0]["capacityProvider"] == "FARGATE"
    for cp in ecs.describe_capacity_providers(capacityProviders=providers)["capacityProviders"]:
        assert cp["autoScalingGroupProvider"]["managedScaling"]["status"] == "ENABLED"
        assert cp["autoScalingGroupProvider"]["autoScalingGroupArn"] in {
            g["AutoScalingGroupARN"] for g in described.values()}
