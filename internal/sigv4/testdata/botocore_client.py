"""Drives convoy-style endpoints with real botocore clients (what aws CLI v1
and boto3 use), unmodified: request building, checksums, aws-chunked
encoding and signing are all botocore's own.

Used by TestBotocoreClient (python_test.go), whose TLS server verifies every
request. Arguments: endpoint URL, CA bundle, access key, secret, temporary
access key, temporary secret, session token. Prints the presigned URL it
fetched; exits non-zero if any call fails.
"""
import ssl
import sys
import urllib.error
import urllib.request

import botocore.session
from botocore.config import Config

endpoint, ca, akid, secret, temp_akid, temp_secret, token = sys.argv[1:8]
ODD_KEY = "dir/my file+1=2 \u00fc\u20ac (copy)&x.txt"

session = botocore.session.get_session()


def client(service, key=akid, sec=secret, tok=None):
    return session.create_client(
        service, region_name="us-east-1", endpoint_url=endpoint, verify=ca,
        aws_access_key_id=key, aws_secret_access_key=sec, aws_session_token=tok,
        config=Config(retries={"max_attempts": 1}))


s3 = client("s3")
data = bytes(range(256)) * 6000  # 1.5 MB
# Default integrity protection: CRC32 in an aws-chunked trailer.
s3.put_object(Bucket="bucket", Key=ODD_KEY, Body=data)
s3.put_object(Bucket="bucket", Key="sha256.bin", Body=data[:5000], ChecksumAlgorithm="SHA256")
s3.put_object(Bucket="bucket", Key="empty", Body=b"")
# A checksum of the XML body, sent as a header.
s3.delete_objects(Bucket="bucket", Delete={"Objects": [{"Key": ODD_KEY}, {"Key": "empty"}]})
s3.list_objects_v2(Bucket="bucket", Prefix="dir/my file", Delimiter="/")

client("sts").get_caller_identity()
client("sts", temp_akid, temp_secret, token).get_caller_identity()
client("iam").list_users(PathPrefix="/a b/")
client("sagemaker").list_training_jobs(NameContains="x y", MaxResults=5)
client("kms").list_keys()

# botocore presigns S3 URLs with SigV2 unless the client is configured
# for s3v4: the first URL must be refused, the second accepted.
ctx = ssl.create_default_context(cafile=ca)
params = {"Bucket": "bucket", "Key": ODD_KEY}
url = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
try:
    urllib.request.urlopen(url, context=ctx)
    sys.exit("a SigV2 presigned URL was accepted")
except urllib.error.HTTPError as e:
    if e.code != 400:
        raise
s3v4 = session.create_client(
    "s3", region_name="us-east-1", endpoint_url=endpoint, verify=ca,
    aws_access_key_id=akid, aws_secret_access_key=secret,
    config=Config(signature_version="s3v4"))
url = s3v4.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
with urllib.request.urlopen(url, context=ctx) as resp:
    resp.read()
print(url)
