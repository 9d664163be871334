"""Create the mirrorfleet CloudFormation stack in moto, for the deploy test.

Makes a VPC and a subnet for the template's parameters, creates the stack,
waits for it, and prints a JSON object: the stack status, its outputs, and
the physical IDs of every resource moto created (moto skips resource types it
does not know, so the test checks the ones it relies on).

usage: moto_stack.py ENDPOINT STACK_NAME TEMPLATE [SETTINGS_PARAMETER]
"""

import json
import sys
import time

import boto3

endpoint, name, template = sys.argv[1:4]
settings_parameter = sys.argv[4] if len(sys.argv) > 4 else ""
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
cfn = boto3.client("cloudformation", **kw)

vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
params = {
    "VpcId": vpc,
    "SubnetIds": subnet,
    "WorkerImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mirrorfleet:test",
    "TableName": f"{name}-mirrors",
    "AlarmEmail": "ops@example.com",
    # Named so the conditional secret and cross-account policies are created too.
    "RegistrySecretArns": "arn:aws:secretsmanager:us-east-1:123456789012:secret:dockerhub-AbCdEf",
    "DestinationRoleArns": "arn:aws:iam::210987654321:role/mirror-push",
    "SourceRoleArns": "arn:aws:iam::210987654322:role/mirror-pull",
    # The SSM parameter every job reads its registry settings from.
    "RegistrySettingsParameter": settings_parameter,
}
cfn.create_stack(
    StackName=name,
    TemplateBody=open(template).read(),
    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    Capabilities=["CAPABILITY_IAM"],
)
for _ in range(120):
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.5)
resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
print(json.dumps({
    "status": stack["StackStatus"],
    "reason": stack.get("StackStatusReason"),
    "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
    "resources": {r.get("LogicalResourceId", "?"): {"type": r.get("ResourceType"), "id": r.get("PhysicalResourceId"), "status": r.get("ResourceStatus")} for r in resources},
}, indent=1))
