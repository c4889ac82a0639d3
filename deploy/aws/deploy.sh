#!/usr/bin/env bash
# One-command deploy of Corral to AWS:
#   1. checks the tools (AWS CLI v2, Docker, Node.js/npm, jq) and the credentials;
#   2. builds the web UI (scripts/build-ui.sh; the corral image embeds it too);
#   3. creates the ECR repositories if missing, builds and pushes the corral and
#      corral-runner images (tagged with the git commit);
#   4. creates the artifacts bucket if missing, `aws cloudformation package`s the nested
#      templates into it and `aws cloudformation deploy`s the root stack;
#   5. syncs ui/dist to the frontend bucket, invalidates CloudFront, prints the URL.
#
# Settings come from deploy/aws/parameters.json (copy parameters-template.json).
# --dry-run prints every AWS and docker call instead of making it, one per line with a
# "DRY-RUN: " prefix; it needs neither aws nor docker nor credentials (only jq).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/aws/deploy.sh [options]

Deploys Corral to AWS with the settings in deploy/aws/parameters.json.

Options:
  --parameters FILE   settings file (default: deploy/aws/parameters.json)
  --region REGION     AWS region (default: the file's Region, then AWS_REGION)
  --stack-name NAME   root stack name (default: the file's StackName, then "corral")
  --image-tag TAG     image tag (default: the file's ImageTag, then the git commit)
  --skip-images       do not build or push images (they must exist with --image-tag)
  --skip-ui           do not build or upload the web UI
  --dry-run           print every AWS and docker call instead of making it
  -h, --help          this help

Needs: AWS CLI v2 with credentials, Docker (daemon running, BuildKit), Node.js 20.19+
and npm, jq. See "Deploy to AWS" in README.md for the IAM permissions.
EOF
}

say() { printf 'deploy: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# The DRY-RUN lines go to the original stdout (fd 3), also from inside $(...).
exec 3>&1
DRY_RUN=0
DRY_ACCOUNT=111122223333

# quoted ARG...: the arguments as one shell-safe, copy-pasteable line.
quoted() {
    local out=() arg sq="'"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//$sq/$sq\\$sq$sq}'")
        fi
    done
    printf '%s' "${out[*]}"
}

# run CMD...: runs the command, or prints it under --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'DRY-RUN: %s\n' "$(quoted "$@")" >&3
    else
        "$@"
    fi
}

# run_if_missing CMD...: like run; the dry-run line says it only runs after a failed check.
run_if_missing() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'DRY-RUN: %s  # only if missing\n' "$(quoted "$@")" >&3
    else
        "$@"
    fi
}

# probe CMD...: whether the command succeeds (quietly); under --dry-run prints it and
# answers "no", so that the dry run shows the create call that may follow.
probe() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'DRY-RUN: %s\n' "$(quoted "$@")" >&3
        return 1
    fi
    "$@" >/dev/null 2>&1
}

# capture PLACEHOLDER CMD...: the command's output, or PLACEHOLDER under --dry-run.
capture() {
    local placeholder=$1
    shift
    if [ "$DRY_RUN" = 1 ]; then
        printf 'DRY-RUN: %s\n' "$(quoted "$@")" >&3
        printf '%s\n' "$placeholder"
    else
        "$@"
    fi
}

# ------------------------------------------------------------------ arguments
params_file=""
region=""
stack_name=""
image_tag=""
skip_images=0
skip_ui=0
while [ $# -gt 0 ]; do
    case "$1" in
    --parameters)
        [ $# -ge 2 ] || die "--parameters needs a file"
        params_file=$2
        shift 2
        ;;
    --region)
        [ $# -ge 2 ] || die "--region needs a value"
        region=$2
        shift 2
        ;;
    --stack-name)
        [ $# -ge 2 ] || die "--stack-name needs a value"
        stack_name=$2
        shift 2
        ;;
    --image-tag)
        [ $# -ge 2 ] || die "--image-tag needs a value"
        image_tag=$2
        shift 2
        ;;
    --skip-images)
        skip_images=1
        shift
        ;;
    --skip-ui)
        skip_ui=1
        shift
        ;;
    --dry-run)
        DRY_RUN=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "$params_file" ]; then
    params_file="$root/deploy/aws/parameters.json"
elif [ "${params_file#/}" = "$params_file" ]; then
    params_file="$PWD/$params_file"
fi
cd "$root"

# ------------------------------------------------------------------ prerequisites
command -v jq >/dev/null 2>&1 || die "jq is needed to read the parameters (Debian: apt-get install jq; macOS: brew install jq)"

problems=()
if ! command -v aws >/dev/null 2>&1; then
    problems+=("the AWS CLI v2 is not installed (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)")
elif ! aws --version 2>&1 | grep -q '^aws-cli/2\.'; then
    problems+=("the AWS CLI must be version 2; found: $(aws --version 2>&1 | head -n1)")
fi
if [ "$skip_images" = 0 ]; then
    if ! command -v docker >/dev/null 2>&1; then
        problems+=("Docker is not installed (https://docs.docker.com/engine/install/)")
    elif [ "$DRY_RUN" = 0 ] && ! docker info >/dev/null 2>&1; then
        problems+=("the Docker daemon is not running or not reachable (try: docker info)")
    fi
fi
if [ "$skip_ui" = 0 ] && { ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; }; then
    problems+=("Node.js 20.19+ and npm are needed to build the UI (Debian: apt-get install nodejs npm)")
fi
if [ "${#problems[@]}" -gt 0 ]; then
    for p in "${problems[@]}"; do
        if [ "$DRY_RUN" = 1 ]; then say "note: $p (fine for --dry-run)"; else say "missing: $p"; fi
    done
    [ "$DRY_RUN" = 1 ] || die "install what is missing and run again"
fi

[ -f "$params_file" ] || die "no $params_file; create it with: cp deploy/aws/parameters-template.json deploy/aws/parameters.json (then edit it)"
jq empty "$params_file" 2>/dev/null || die "$params_file is not valid JSON"

setting() { jq -r --arg k "$1" '.[$k] // empty | tostring' "$params_file"; }
param() { jq -r --arg k "$1" '.Parameters[$k] // empty | tostring' "$params_file"; }

region="${region:-$(setting Region)}"
region="${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}"
[ -n "$region" ] || die "no region: set Region in $params_file, --region or AWS_REGION"
[[ "$region" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]] || die "not an AWS region: $region"
stack_name="${stack_name:-$(setting StackName)}"
stack_name="${stack_name:-corral}"
[[ "$stack_name" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || die "not a valid stack name: $stack_name"

env_name="$(param EnvironmentName)"
env_name="${env_name:-corral}"
corral_repo="$(param CorralRepositoryName)"
corral_repo="${corral_repo:-corral/corral}"
runner_repo="$(param RunnerRepositoryName)"
runner_repo="${runner_repo:-corral/corral-runner}"
fetch_model=0
[ "$(setting FetchModelIntoRunnerImage)" = true ] && fetch_model=1

api_domain="$(param ApiDomainName)"
certificate="$(param CertificateArn)"
[ -n "$api_domain" ] || die "Parameters.ApiDomainName is required in $params_file"
[ -n "$certificate" ] || die "Parameters.CertificateArn is required in $params_file"
if [ "$DRY_RUN" = 0 ] && [[ "$api_domain$certificate" == *example.com* || "$certificate" == *:111122223333:* ]]; then
    die "ApiDomainName / CertificateArn in $params_file are still the template's examples"
fi

if [ -z "$image_tag" ]; then image_tag="$(setting ImageTag)"; fi
if [ -z "$image_tag" ]; then
    if [ "$skip_images" = 1 ]; then die "--skip-images needs --image-tag (or ImageTag) of images already pushed"; fi
    image_tag="$(git rev-parse --short=12 HEAD 2>/dev/null || echo manual)"
    if [ -n "$(git status --porcelain 2>/dev/null)" ]; then image_tag="$image_tag-dirty"; fi
fi

say "stack $stack_name (environment $env_name) in $region, images tagged $image_tag"
[ "$DRY_RUN" = 0 ] || say "dry run: printing the AWS and docker calls instead of making them"

# ------------------------------------------------------------------ credentials
account="$(capture "$DRY_ACCOUNT" aws sts get-caller-identity --region "$region" --query Account --output text)" ||
    die "no usable AWS credentials (run aws configure, or set AWS_PROFILE)"
registry="$account.dkr.ecr.$region.amazonaws.com"
corral_image="$registry/$corral_repo:$image_tag"
runner_image="$registry/$runner_repo:$image_tag"

# ------------------------------------------------------------------ web UI
if [ "$skip_ui" = 0 ]; then
    say "building the web UI"
    run scripts/build-ui.sh
fi

# ------------------------------------------------------------------ images
ensure_repository() {
    if ! probe aws ecr describe-repositories --region "$region" --repository-names "$1"; then
        [ "$DRY_RUN" = 1 ] || say "creating ECR repository $1"
        run_if_missing aws ecr create-repository --region "$region" --repository-name "$1" \
            --image-scanning-configuration scanOnPush=true \
            --encryption-configuration encryptionType=AES256 >/dev/null
    fi
}

if [ "$skip_images" = 0 ]; then
    ensure_repository "$corral_repo"
    ensure_repository "$runner_repo"
    say "logging in to $registry"
    if [ "$DRY_RUN" = 1 ]; then
        printf 'DRY-RUN: %s | %s\n' "$(quoted aws ecr get-login-password --region "$region")" \
            "$(quoted docker login --username AWS --password-stdin "$registry")"
    else
        aws ecr get-login-password --region "$region" |
            docker login --username AWS --password-stdin "$registry" >/dev/null
    fi
    say "building $corral_image"
    run docker build --platform linux/amd64 --file deploy/docker/corral.Dockerfile \
        --tag "$corral_image" .
    run docker push "$corral_image"
    say "building $runner_image (the first build compiles llama.cpp: allow 10+ minutes)"
    run docker build --platform linux/amd64 --file deploy/docker/corral-runner.Dockerfile \
        --build-arg "FETCH_MODEL=$fetch_model" --tag "$runner_image" .
    run docker push "$runner_image"
fi

# ------------------------------------------------------------------ stacks
bucket="$(setting ArtifactBucket)"
bucket="${bucket:-corral-cfn-$account-$region}"
if ! probe aws s3api head-bucket --region "$region" --bucket "$bucket"; then
    [ "$DRY_RUN" = 1 ] || say "creating artifacts bucket $bucket"
    if [ "$region" = us-east-1 ]; then
        run_if_missing aws s3api create-bucket --region "$region" --bucket "$bucket" >/dev/null
    else
        run_if_missing aws s3api create-bucket --region "$region" --bucket "$bucket" \
            --create-bucket-configuration "LocationConstraint=$region" >/dev/null
    fi
    run_if_missing aws s3api put-public-access-block --region "$region" --bucket "$bucket" \
        --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
packaged="$work/main.packaged.yaml"
say "packaging the templates into s3://$bucket/$stack_name/"
run aws cloudformation package --region "$region" \
    --template-file deploy/aws/templates/main.yaml \
    --s3-bucket "$bucket" --s3-prefix "$stack_name" \
    --output-template-file "$packaged" >/dev/null

overrides=()
while IFS= read -r kv; do overrides+=("$kv"); done < <(
    jq -r '.Parameters // {} | to_entries[] | select(.key | startswith("_") | not)
           | select(.key != "CorralImage" and .key != "RunnerImage")
           | "\(.key)=\(.value | tostring)"' "$params_file"
)
overrides+=("CorralImage=$corral_image" "RunnerImage=$runner_image")

say "deploying stack $stack_name (the first deploy takes 15-25 minutes: NAT, ALB, CloudFront)"
run aws cloudformation deploy --region "$region" --stack-name "$stack_name" \
    --template-file "$packaged" \
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND \
    --no-fail-on-empty-changeset \
    --tags "Project=corral" "Environment=$env_name" \
    --parameter-overrides "${overrides[@]}" ||
    die "the stack did not deploy; the first failed resource is in: aws cloudformation describe-stack-events --region $region --stack-name $stack_name (a stack that failed its first creation must be deleted before the next try)"

placeholder_outputs='[
  {"OutputKey": "Url", "OutputValue": "https://<DistributionDomainName>"},
  {"OutputKey": "ApiUrl", "OutputValue": "https://<ApiDomainName>"},
  {"OutputKey": "LoadBalancerDnsName", "OutputValue": "<LoadBalancerDnsName>"},
  {"OutputKey": "UiBucketName", "OutputValue": "<UiBucketName>"},
  {"OutputKey": "DistributionId", "OutputValue": "<DistributionId>"}
]'
outputs="$(capture "$placeholder_outputs" aws cloudformation describe-stacks --region "$region" \
    --stack-name "$stack_name" --query 'Stacks[0].Outputs' --output json)"
output() { jq -r --arg k "$1" '.[] | select(.OutputKey == $k) | .OutputValue' <<<"$outputs"; }

# ------------------------------------------------------------------ upload the UI
if [ "$skip_ui" = 0 ]; then
    ui_bucket="$(output UiBucketName)"
    distribution="$(output DistributionId)"
    if [ -z "$ui_bucket" ] || [ -z "$distribution" ]; then
        die "the stack has no UiBucketName/DistributionId outputs"
    fi
    say "uploading ui/dist to s3://$ui_bucket"
    # Hashed assets first and cached for a year, then index.html and the rest uncached, so
    # no page ever references an asset that is not there yet. Old assets stay for pages
    # still open in browsers.
    if [ "$DRY_RUN" = 1 ] || [ -d ui/dist/assets ]; then
        run aws s3 sync ui/dist/assets "s3://$ui_bucket/assets" --region "$region" \
            --cache-control "public,max-age=31536000,immutable" --only-show-errors
    fi
    run aws s3 sync ui/dist "s3://$ui_bucket" --region "$region" --exclude "assets/*" \
        --delete --cache-control "no-cache" --only-show-errors
    run aws cloudfront create-invalidation --distribution-id "$distribution" --paths "/*" >/dev/null
fi

# ------------------------------------------------------------------ done
url="$(output Url)"
say "done"
echo "Corral is at: $url"
echo "API and gateway: $(output ApiUrl) (also through $url/api, /v1, /ollama, /i)"
if [ -z "$(param HostedZoneId)" ]; then
    echo "DNS: point $api_domain at $(output LoadBalancerDnsName) (CNAME) if you have not yet."
fi
