#!/usr/bin/env bash
# `make run`: ensures a first admin exists, then starts `corral serve` on SQLite with
# the local driver, printing the URL and the admin login.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir="${CORRAL_DATA_DIR:-.corral}"
target="${CARGO_TARGET_DIR:-target}"
corral="$target/release/corral"
admin_file="$data_dir/first-admin.txt"
admin_email="${CORRAL_ADMIN_EMAIL:-admin@corral.local}"
mkdir -p "$data_dir"

if [ ! -s "$admin_file" ]; then
  # 20 random characters plus one of each class the password policy asks for.
  password="$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)Aa1!"
  echo "$password" | "$corral" --data-dir "$data_dir" admin create-user \
    --email "$admin_email" --role admin --password-stdin
  umask 077
  printf 'email: %s\npassword: %s\n' "$admin_email" "$password" >"$admin_file"
fi

echo
echo "First admin login (also in $admin_file):"
sed 's/^/  /' "$admin_file"
echo
exec "$corral" --data-dir "$data_dir" serve "$@"
