"""Signs requests with botocore's own signers and prints them as JSON.

Used by TestBotocoreSigned (python_test.go): each request is rebuilt on the
wire in Go and verified there. Arguments: access key, secret, temporary
access key, temporary secret, session token.
"""
import base64
import json
import sys

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpchecksum import _apply_request_trailer_checksum
from botocore.utils import percent_encode

akid, secret, temp_akid, temp_secret, token = sys.argv[1:6]
creds = Credentials(akid, secret)
temp = Credentials(temp_akid, temp_secret, token)

ODD_KEY = "dir/my file+1=2 \u00fc\u20ac (copy)&x.txt"
S3 = "https://s3.us-east-1.amazonaws.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
out = []


def emit(name, req, body=None):
    p = req.prepare()
    if body is None:
        body = p.body
        if hasattr(body, "read"):
            body = body.read()
        if body is None:
            body = b""
        if isinstance(body, str):
            body = body.encode()
    out.append(
        {
            "name": name,
            "method": p.method,
            "url": p.url,
            "headers": [[k, v] for k, v in p.headers.items()],
            "body": base64.b64encode(body).decode(),
        }
    )


def signed(auth, **kw):
    req = AWSRequest(**kw)
    auth.add_auth(req)
    return req


emit("sts form POST", signed(SigV4Auth(creds, "sts", "us-east-1"), method="POST",
     url="https://sts.amazonaws.com/", data="Action=GetCallerIdentity&Version=2011-06-15", headers=dict(FORM)))
emit("sts with session token", signed(SigV4Auth(temp, "sts", "us-east-1"), method="POST",
     url="https://sts.amazonaws.com/", data="Action=GetCallerIdentity&Version=2011-06-15", headers=dict(FORM)))
emit("sagemaker json", signed(SigV4Auth(creds, "sagemaker", "us-east-1"), method="POST",
     url="https://api.sagemaker.us-east-1.amazonaws.com/", data='{"MaxResults": 10}',
     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListTrainingJobs"}))
emit("iam query GET with params", signed(SigV4Auth(creds, "iam", "us-east-1"), method="GET",
     url="https://iam.amazonaws.com/",
     params={"Action": "ListUsers", "Version": "2010-05-08", "PathPrefix": "/a b/", "Marker": "x+y=z~\u20ac"}))
emit("sagemaker runtime, path normalised by botocore", signed(SigV4Auth(creds, "sagemaker", "us-east-1"), method="POST",
     url="https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/./ep//invocations", data="{}",
     headers={"Content-Type": "application/json"}))
emit("s3 PUT odd key", signed(S3SigV4Auth(creds, "s3", "us-east-1"), method="PUT",
     url=S3 + "/bucket/" + percent_encode(ODD_KEY, safe="/~"), data=b"hello from botocore\n",
     headers={"Content-Type": "text/plain", "x-amz-meta-note": "  two   spaces "}))
emit("s3 GET with query", signed(S3SigV4Auth(creds, "s3", "us-east-1"), method="GET",
     url=S3 + "/bucket", params={"list-type": "2", "prefix": "a/b c", "delimiter": "/"}))
emit("s3 GET with Date header", signed(S3SigV4Auth(creds, "s3", "us-east-1"), method="GET",
     url=S3 + "/bucket/k", headers={"Date": "placeholder"}))

# Presigned URLs: botocore's presigners put the signature in the URL.
emit("s3 presigned GET odd key", signed(S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=900), method="GET",
     url=S3 + "/bucket/" + percent_encode(ODD_KEY, safe="/~") + "?versionId=v%2B1"))
emit("s3 presigned with token", signed(S3SigV4QueryAuth(temp, "s3", "us-east-1", expires=60), method="GET",
     url=S3 + "/bucket/k"))
emit("sts presigned GetCallerIdentity", signed(SigV4QueryAuth(creds, "sts", "us-east-1", expires=60), method="GET",
     url="https://sts.amazonaws.com/", params={"Action": "GetCallerIdentity", "Version": "2011-06-15"}))


# aws-chunked with an unsigned trailer, as botocore sends PutObject over
# HTTPS by default (AwsChunkedWrapper, Transfer-Encoding: chunked).
def chunked(name, algorithm, data):
    rd = {
        "headers": {"Content-Length": str(len(data))},
        "body": data,
        "context": {"checksum": {"request_algorithm": {
            "in": "trailer", "name": "x-amz-checksum-" + algorithm, "algorithm": algorithm}}},
    }
    _apply_request_trailer_checksum(rd)
    req = AWSRequest(method="PUT", url=S3 + "/bucket/" + percent_encode(ODD_KEY, safe="/~"),
                     headers=rd["headers"], data=rd["body"])
    req.context.update(rd["context"])
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    emit(name, req, body=rd["body"].read())


data = bytes(range(256)) * 5000  # 1.28 MB: two of botocore's 1 MiB chunks
chunked("aws-chunked CRC32 trailer", "crc32", data)
chunked("aws-chunked SHA256 trailer", "sha256", data[:1000])
chunked("aws-chunked SHA1 trailer", "sha1", data[:1])
chunked("aws-chunked CRC32 trailer, empty body", "crc32", b"")

json.dump(out, sys.stdout)
