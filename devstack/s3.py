"""A real S3 server: MinIO, built from its Go module by ``scripts/install``."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from coprocessor.settings import load_settings

from . import process
from .component import Info
from .versions import minio_binary


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/minio/health/live", timeout=2
        ) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MinioS3:
    name = "s3"

    def __init__(self, port: int | None = None) -> None:
        self.requested_port = port

    def up(self, state_dir: Path, previous: Info | None) -> Info:
        if previous and self.health(previous)["healthy"]:
            self._ensure_bucket(previous)  # a stack made before a bucket was added gets it
            return previous
        binary = process.require_installed(minio_binary(), "MinIO")
        settings = load_settings()
        data = state_dir / "s3" / "data"
        logfile = state_dir / "s3" / "minio.log"
        data.mkdir(parents=True, exist_ok=True)
        port = process.choose_port(self.requested_port, previous, "s3")
        console = process.free_port()
        pid = process.spawn(
            [
                str(binary),
                "server",
                str(data),
                "--quiet",
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console}",
            ],
            logfile,
            env={
                "MINIO_ROOT_USER": settings.s3_access_key,
                "MINIO_ROOT_PASSWORD": settings.s3_secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )
        process.wait_until(lambda: _live(port), timeout=60, service="s3", log_path=logfile, pid=pid)
        info: Info = {
            "pid": pid,
            "port": port,
            "data_dir": str(data),
            "log": str(logfile),
            "bucket": settings.s3_bucket,
            "access_key": settings.s3_access_key,
            "secret_key": settings.s3_secret_key,
        }
        self._ensure_bucket(info)
        return info

    def _ensure_bucket(self, info: Info) -> None:
        import boto3
        from botocore.exceptions import ClientError

        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{info['port']}",
            aws_access_key_id=info["access_key"],
            aws_secret_access_key=info["secret_key"],
            region_name="us-east-1",
        )
        settings = load_settings()
        # The coprocessor's own bucket, and the two the protocol publishes into.
        for bucket in (info["bucket"], settings.s3_bucket_ct64, settings.s3_bucket_ct128):
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as error:
                if error.response["Error"]["Code"] not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise

    def down(self, info: Info) -> None:
        process.stop(info.get("pid"), expect="minio")

    def health(self, info: Info) -> Info:
        alive = process.is_running(info.get("pid"), expect="minio")
        healthy = alive and _live(int(info["port"]))
        return {
            "healthy": healthy,
            "pid": info.get("pid"),
            "port": info.get("port"),
            "endpoint": f"http://127.0.0.1:{info.get('port')}",
            "bucket": info.get("bucket"),
        }

    def env(self, info: Info) -> dict[str, str]:
        return {
            "FHE_S3_ENDPOINT": f"http://127.0.0.1:{info['port']}",
            "FHE_S3_BUCKET": info["bucket"],
            "FHE_S3_ACCESS_KEY": info["access_key"],
            "FHE_S3_SECRET_KEY": info["secret_key"],
        }
