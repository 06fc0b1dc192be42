# bash completion for cos. Generated from the argument parser (src/cos/cli/verbs.py) by `make docs`; do not edit.
# shellcheck shell=bash

_cos() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmd="" i w
    [[ $COMP_CWORD -gt 0 ]] && prev="${COMP_WORDS[COMP_CWORD-1]}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            --config-dir) ((i++)) ;;
            -*) ;;
            *) cmd="$w"; break ;;
        esac
    done
    local opts="" values="" files=0 dirs=0
    case "$cmd" in
        "")
            opts="-h --help --version --debug --quiet -q --config-dir"
            case "$prev" in
                --config-dir) dirs=1 ;;
            esac
            ;;
        init)
            opts="-h --help --force --list"
            ;;
        build-disk)
            opts="-h --help -o --output --cloud-init --type --size --recovery-system --expandable --deploy-command --tls-verify --cosign-key --platform --json"
            case "$prev" in
                -o|--output) files=1 ;;
                --cloud-init) files=1 ;;
                --type) values="raw qcow2 vhd gce" ;;
                --size) return 0 ;;
                --recovery-system) return 0 ;;
                --deploy-command) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        build-iso)
            opts="-h --help -o --output --cloud-init --label --overlay-iso --tls-verify --cosign-key --platform --json"
            case "$prev" in
                -o|--output) files=1 ;;
                --cloud-init) files=1 ;;
                --label) return 0 ;;
                --overlay-iso) dirs=1 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        mount)
            opts="-h --help --mode --oem-label --persistent-label --no-stages"
            case "$prev" in
                --mode) values="active passive recovery live" ;;
                --oem-label) return 0 ;;
                --persistent-label) return 0 ;;
            esac
            ;;
        cloud-init)
            opts="-h --help -s --stage --root --dry-run --strict --schema --validate"
            case "$prev" in
                -s|--stage) return 0 ;;
                --root) files=1 ;;
            esac
            ;;
        run-stage)
            opts="-h --help --dry-run --strict"
            ;;
        install)
            opts="-h --help --system --cloud-init --recovery-system --force --reboot --poweroff --tls-verify --cosign-key --platform --json"
            case "$prev" in
                --system) return 0 ;;
                --cloud-init) files=1 ;;
                --recovery-system) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        live-install)
            opts="-h --help --json"
            ;;
        upgrade)
            opts="-h --help --system --force --recovery --bootloader --check --download-only --apply --offline --reboot --tls-verify --cosign-key --platform --json"
            case "$prev" in
                --system) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        upgrade-recovery)
            opts="-h --help --recovery-system --force --tls-verify --cosign-key --platform --json"
            case "$prev" in
                --recovery-system) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        rollback)
            opts="-h --help --once --reboot"
            ;;
        reset)
            opts="-h --help --system --reset-persistent --reset-oem --reboot --tls-verify --cosign-key --platform --json"
            case "$prev" in
                --system) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        boot-assessment)
            opts="-h --help --mark-good --status"
            ;;
        pull-image)
            opts="-h --help --tls-verify --cosign-key --platform --json"
            case "$prev" in
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        inspect)
            opts="-h --help --json --tls-verify --cosign-key --platform"
            case "$prev" in
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        rechunk)
            opts="-h --help --max-layers --prev --tls-verify --cosign-key --platform"
            case "$prev" in
                --max-layers) return 0 ;;
                --prev) return 0 ;;
                --tls-verify) values="true false" ;;
                --cosign-key) files=1 ;;
                --platform) return 0 ;;
            esac
            ;;
        sign)
            opts="-h --help --key -a --annotation --bundle-format --tls-verify"
            case "$prev" in
                --key) files=1 ;;
                -a|--annotation) return 0 ;;
                --bundle-format) values="old new" ;;
                --tls-verify) values="true false" ;;
            esac
            ;;
        generate-key-pair)
            opts="-h --help --output-key-prefix"
            case "$prev" in
                --output-key-prefix) files=1 ;;
            esac
            ;;
        status)
            opts="-h --help --json"
            ;;
        logs)
            opts="-h --help --boot --json"
            case "$prev" in
                --boot) return 0 ;;
            esac
            ;;
    esac
    if [[ -n "$values" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")
    elif ((dirs)); then
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
    elif ((files)); then
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    elif [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    elif [[ -z "$cmd" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "init build-disk build-iso mount cloud-init run-stage install live-install upgrade upgrade-recovery rollback reset boot-assessment pull-image inspect rechunk sign generate-key-pair status logs" -- "$cur")
    fi
    return 0
}
complete -o default -F _cos cos
