/**
 * Shell completion: `bdus completion bash|zsh|fish` prints a script that asks `bdus __complete
 * WORDS...` for the candidates of the last word, so the three shells share one implementation
 * (this file) and always agree with the command table: commands, their flags, flag values with
 * a fixed set (frontends, recovery modes, TLS modes), device paths and example drivers. A
 * `:files` answer means "complete a file name" (a driver module, an image).
 */
import { readdirSync } from 'node:fs';
import type { ParseArgsConfig } from 'node:util';
import { RECOVERY_MODES } from '../driver/attributes.js';
import { FRONTENDS } from '../frontend/select.js';
import { DEVICE_PATH_PREFIX } from '../util/paths.js';
import { DRIVER_NAMES } from '../drivers/catalog.js';
import { UsageError } from './usage.js';

type OptionSpecs = NonNullable<ParseArgsConfig['options']>;

/** What a command's positional arguments are, for completion. */
export type Positionals = 'driver' | 'device-then-driver' | 'devices' | 'files' | 'none' | readonly string[];

export interface CompletionSpec {
  readonly options: OptionSpecs;
  readonly positionals: Positionals;
}

const VALUES: Record<string, readonly string[]> = {
  frontend: FRONTENDS,
  'recovery-mode': RECOVERY_MODES,
  tls: ['off', 'on', 'require'],
};

const FILES = ':files';

function devicePaths(): string[] {
  try {
    const prefix = DEVICE_PATH_PREFIX.slice('/dev/'.length);
    return readdirSync('/dev')
      .filter((name) => name.startsWith(prefix))
      .map((name) => `/dev/${name}`);
  } catch {
    return [];
  }
}

/** The candidates for the last of `words` (the words after `bdus`; the last may be empty). */
export function complete(words: readonly string[], commands: Readonly<Record<string, CompletionSpec>>): string[] {
  const current = words.at(-1) ?? '';
  const [name, ...rest] = words;
  if (words.length <= 1) return Object.keys(commands).filter((c) => c.startsWith(current));
  const command = commands[name!];
  if (!command) return [];
  const before = rest.slice(0, -1);
  const takesValue = (word: string) => {
    const spec = command.options[word.replace(/^--/, '')];
    return word.startsWith('--') && !word.includes('=') && spec?.type === 'string';
  };
  const previous = before.at(-1);
  if (previous !== undefined && takesValue(previous) && !before.includes('--')) {
    const values = VALUES[previous.slice(2)];
    return values ? values.filter((v) => v.startsWith(current)) : [FILES];
  }
  if (current.startsWith('-') && !before.includes('--')) {
    return Object.entries(command.options)
      .flatMap(([option, spec]) => [`--${option}`, ...(spec.short && current.length <= 2 ? [`-${spec.short}`] : [])])
      .concat('--help')
      .filter((o) => o.startsWith(current));
  }
  // Which positional is this? Count the words that are not options or option values.
  let index = 0;
  for (let i = 0; i < before.length; i++) {
    if (before[i] === '--') {
      index += before.length - i - 1;
      break;
    }
    if (before[i]!.startsWith('-')) {
      if (takesValue(before[i]!)) i++;
      continue;
    }
    index++;
  }
  const kind = command.positionals;
  const driver = () => (current.includes('/') || current.startsWith('.') ? [FILES] : [...DRIVER_NAMES.filter((e) => e.startsWith(current)), FILES]);
  if (typeof kind !== 'string') return index === 0 ? kind.filter((k) => k.startsWith(current)) : [];
  switch (kind) {
    case 'driver':
      return index === 0 ? driver() : [FILES];
    case 'device-then-driver':
      return index === 0 ? devicePaths().filter((d) => d.startsWith(current)) : index === 1 ? driver() : [FILES];
    case 'devices':
      return devicePaths().filter((d) => d.startsWith(current));
    case 'files':
      return [FILES];
    default:
      return [];
  }
}

const BASH = `# bdus completion for bash: source it, or put it in /etc/bash_completion.d/bdus
_bdus() {
  local IFS=$'\\n' candidates
  candidates=($(bdus __complete "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
  if [[ " \${candidates[*]} " == *" :files "* ]]; then
    candidates=("\${candidates[@]/:files/}")
    COMPREPLY=($(compgen -W "\${candidates[*]}" -- "\${COMP_WORDS[COMP_CWORD]}") $(compgen -f -- "\${COMP_WORDS[COMP_CWORD]}"))
  else
    COMPREPLY=($(compgen -W "\${candidates[*]}" -- "\${COMP_WORDS[COMP_CWORD]}"))
  fi
}
complete -o filenames -F _bdus bdus
`;

const ZSH = `#compdef bdus
# bdus completion for zsh: put it in a directory of $fpath as _bdus, or source it
_bdus() {
  local -a candidates
  candidates=("\${(@f)$(bdus __complete "\${(@)words[2,CURRENT]}" 2>/dev/null)}")
  if (( \${candidates[(I):files]} )); then
    candidates=("\${(@)candidates:#:files}")
    (( \${#candidates} )) && compadd -a candidates
    _files
  else
    compadd -a candidates
  fi
}
if [[ "\${funcstack[1]}" == _bdus ]]; then _bdus "$@"; else compdef _bdus bdus; fi
`;

const FISH = `# bdus completion for fish: put it in ~/.config/fish/completions/bdus.fish
function __bdus_complete
    set -l words (commandline -opc) (commandline -ct)
    for candidate in (bdus __complete $words[2..-1] 2>/dev/null)
        if test "$candidate" = :files
            __fish_complete_path (commandline -ct)
        else
            echo $candidate
        end
    end
end
complete -c bdus -f -a '(__bdus_complete)'
`;

export const COMPLETION_HELP = `usage: bdus completion <bash | zsh | fish>

Prints the shell completion script for bdus: commands, flags, flag values, device paths and
example drivers.

  bash:  bdus completion bash > /etc/bash_completion.d/bdus
  zsh:   bdus completion zsh > "\${fpath[1]}/_bdus"
  fish:  bdus completion fish > ~/.config/fish/completions/bdus.fish
`;

export function completionScript(shell: string | undefined): string {
  const script = { bash: BASH, zsh: ZSH, fish: FISH }[shell ?? ''];
  if (!script) throw new UsageError(`bdus completion: give a shell: bash, zsh or fish${shell ? ` (not '${shell}')` : ''}`);
  return script;
}
