package iam

import "time"

// AdministratorAccess is the AWS-managed policy that allows everything.
const AdministratorAccess = "arn:aws:iam::aws:policy/AdministratorAccess"

// builtinPolicies are the AWS-managed policies convoy knows, so that scripts
// written for AWS (attach-role-policy … AmazonSageMakerFullAccess) work.
// Their documents are reduced to the services convoy implements.
var builtinPolicies = map[string]ManagedPolicy{}

var builtinOrder []string

func init() {
	epoch := time.Date(2015, 2, 6, 18, 39, 46, 0, time.UTC)
	add := func(name, id, doc, desc string) {
		arn := builtinPath + name
		builtinOrder = append(builtinOrder, arn)
		builtinPolicies[arn] = ManagedPolicy{ARN: arn, Name: name, ID: id, Path: "/", Document: doc,
			Description: desc, Created: epoch, Updated: epoch, BuiltIn: true}
	}
	add("AdministratorAccess", "ANPAIWMBCKSKIEE64ZLYK",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`,
		"Provides full access to AWS services and resources.")
	add("ReadOnlyAccess", "ANPAILL3HVNFSB6DCOWYQ",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iam:Get*","iam:List*","s3:Get*","s3:List*","kms:Describe*","kms:List*","kms:Get*","sagemaker:Describe*","sagemaker:List*","sagemaker:Get*","sagemaker:Search","sts:GetCallerIdentity"],"Resource":"*"}]}`,
		"Provides read-only access to AWS services and resources.")
	add("IAMFullAccess", "ANPAI7XKCFMBPM3QQRRVQ",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:*","Resource":"*"}]}`,
		"Provides full access to IAM via the AWS Management Console.")
	add("AmazonS3FullAccess", "ANPAIFIR6V6BVTRAHWINE",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":"*"}]}`,
		"Provides full access to all buckets via the AWS Management Console.")
	add("AmazonSageMakerFullAccess", "ANPAJZ5IWYMXO5QDB4QOG",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sagemaker:*","s3:*","kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*","kms:DescribeKey","kms:ListKeys","kms:ListAliases","kms:CreateGrant"],"Resource":"*"},{"Effect":"Allow","Action":"iam:PassRole","Resource":"*","Condition":{"StringEquals":{"iam:PassedToService":"sagemaker.amazonaws.com"}}}]}`,
		"Provides full access to Amazon SageMaker via the AWS Management Console and SDK.")
}
