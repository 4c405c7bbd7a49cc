#!/usr/bin/env bash
# `make proto`: regenerates Sources/LoupeAPI/Generated from api/v1/**/*.proto.
# protoc comes from PyPI's grpcio-tools; the Swift plugins are built from the offline
# swift-protobuf and grpc-swift-protobuf packages this package already depends on.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import grpc_tools' 2>/dev/null || pip install -q grpcio-tools
swift build --product protoc-gen-swift >/dev/null
swift build --product protoc-gen-grpc-swift-2 >/dev/null
bin=$(swift build --show-bin-path)
wkt=$(python3 -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
out=Sources/LoupeAPI/Generated
rm -rf "$out"
mkdir -p "$out"
protos=$(cd api/v1 && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd api/v1 && python3 -m grpc_tools.protoc -I . -I "$wkt" \
    --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
    --swift_out="../../$out" --swift_opt=Visibility=Public,FileNaming=DropPath \
    --grpc-swift_out="../../$out" --grpc-swift_opt=Visibility=Public,FileNaming=DropPath,Server=true,Client=true \
    $protos)
ls "$out"
