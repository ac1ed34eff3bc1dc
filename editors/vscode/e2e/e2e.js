#!/usr/bin/env node
/*
 * The draftline VS Code extension inside a real VS Code: code-server (VS Code 1.100 in the
 * browser) with the packaged .vsix installed, driven through headless chromium by
 * playwright-core the way a user drives it (keys, clicks, the command palette, the settings
 * editor). The language server is the real `draftline serve` with the real default model.
 *
 *   node e2e.js --server-path /path/to/.venv/bin/draftline [--vsix ../draftline-0.1.0.vsix]
 *               [--out DIR] [--screenshot PNG] [--chromium /usr/bin/chromium] [--timeout S] [--keep]
 *
 * Everything lives in a fresh temporary folder (code-server's config, user-data dir D,
 * extensions dir E, workspace W, chromium profile); code-server listens on a free port of
 * 127.0.0.1. What happens, in order:
 *   install   `code-server --install-extension draftline-0.1.0.vsix` into E
 *   open      the workbench, click demo.py in the explorer, wait for the draftline status bar
 *             item to leave the loading state (the model-loading progress ends)
 *   ghost     go to `    return ` in midpoint() (Ctrl+G), type `(p[0]`, wait for ghost text in
 *             the editor DOM (.ghost-text-decoration)
 *   cycle     Alt+] shows another draft (the hint counter moves to 2/N, the text changes); with
 *             one draft there (the server's choice), the next ghost text gets the Alt+];
 *             the screenshot (--screenshot) is taken here
 *   accept    Tab: the line in the editor, then demo.py on disk after Ctrl+S, is the typed
 *             text plus the draft shown
 *   typeover  in closest(), type `ret`, then the next character of the ghost text (the
 *             suggestion follows), Ctrl+Right (one word accepted, the rest still shown),
 *             then a character the ghost text does not continue with (it updates or vanishes)
 *   settings  the settings editor: draftline.drafts = 2; "draftline: Show Status" writes the
 *             server's `draftline/status` JSON (settings.drafts == 2, the counters) to the
 *             output channel, read back from D/logs/<session>/exthost1/draftline.draftline/
 *   restart   "draftline: Restart Server": a new server process (another pid) that loaded the
 *             model again and still has drafts = 2; ghost text appears again
 *   logs      the output channel log: two model loads, no traceback, no argument errors
 * Prints progress lines `e2e: ...` and, last, one line `E2E {json}`; exit status 0 when every
 * check passed. On failure it leaves a screenshot (failure.png) and the logs in --out.
 */
'use strict';

const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const HERE = __dirname;

function parseArgs(argv) {
    const a = {
        serverPath: process.env.DRAFTLINE_SERVER_PATH || '',
        vsix: path.join(HERE, '..', 'draftline-0.1.0.vsix'),
        out: '',
        screenshot: '',
        chromium: process.env.DRAFTLINE_CHROMIUM || '/usr/bin/chromium',
        keep: false,
        timeoutS: 300,
    };
    for (let i = 2; i < argv.length; i++) {
        const k = argv[i];
        const v = () => argv[++i];
        if (k === '--server-path') a.serverPath = v();
        else if (k === '--vsix') a.vsix = v();
        else if (k === '--out') a.out = v();
        else if (k === '--screenshot') a.screenshot = v();
        else if (k === '--chromium') a.chromium = v();
        else if (k === '--timeout') a.timeoutS = Number(v());
        else if (k === '--keep') a.keep = true;
        else throw new Error(`unknown argument ${k}`);
    }
    if (!a.serverPath) throw new Error('--server-path (the draftline executable) is required');
    return a;
}

const DEMO = [
    '"""Geometry helpers."""',
    '',
    'import math',
    '',
    '',
    'def distance(p, q):',
    '    """Euclidean distance between two points."""',
    '    return math.sqrt((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2)',
    '',
    '',
    'def midpoint(p, q):',
    '    """The point halfway between p and q."""',
    '    return ',
    '',
    '',
    'def perimeter(points):',
    '    """Length of the closed polygon through points."""',
    '    total = 0.0',
    '    for i in range(len(points)):',
    '        total += distance(points[i], points[(i + 1) % len(points)])',
    '    return total',
    '',
    '',
    'def closest(points, target):',
    '    """The point of points nearest to target."""',
    '    ',
].join('\n');
const MIDPOINT_LINE = 13; // `    return ` (1-based)
const CLOSEST_LINE = 26; // the last line, `    `

const t0 = Date.now();
const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
function log(msg) {
    console.log(`e2e: [${secs()}s] ${msg}`);
}

class CheckError extends Error {}
function check(cond, what) {
    if (!cond) throw new CheckError(what);
}

/** Poll `fn` until it returns something truthy; throws with `what` after `timeoutMs`. */
async function waitFor(what, fn, timeoutMs = 30000, everyMs = 100) {
    const end = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            last = await fn();
        } catch (e) {
            last = undefined;
            if (Date.now() > end) throw new CheckError(`${what}: ${e && e.message}`);
        }
        if (last) return last;
        if (Date.now() > end) throw new CheckError(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await new Promise((r) => setTimeout(r, everyMs));
    }
}

function writeJson(p, v) {
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, JSON.stringify(v, null, 2));
}

const CODE_SERVER = path.join(HERE, 'node_modules', 'code-server', 'out', 'node', 'entry.js');

function codeServerArgs(dirs) {
    return [CODE_SERVER, '--config', dirs.config, '--user-data-dir', dirs.D, '--extensions-dir', dirs.E,
        '--disable-telemetry', '--disable-update-check', '--disable-getting-started-override'];
}

/** The draftline output channel's log file (the newest session under D/logs). */
function channelLog(D) {
    const logs = path.join(D, 'logs');
    if (!fs.existsSync(logs)) return undefined;
    for (const s of fs.readdirSync(logs).sort().reverse()) {
        const dir = path.join(logs, s, 'exthost1');
        if (!fs.existsSync(dir)) continue;
        for (const sub of fs.readdirSync(dir)) {
            const p = path.join(dir, sub);
            if (fs.statSync(p).isDirectory() && /draftline/.test(sub)) {
                const f = fs.readdirSync(p).find((n) => n.endsWith('.log'));
                if (f) return path.join(p, f);
            }
        }
    }
    return undefined;
}

/** The JSON objects "draftline: Show Status" wrote to the channel (pretty-printed, one per call). */
function statusDumps(text) {
    const out = [];
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
        if (!/\] \{$/.test(lines[i])) continue;
        const body = ['{'];
        let j = i + 1;
        for (; j < lines.length && lines[j] !== '}'; j++) body.push(lines[j]);
        if (j < lines.length) {
            body.push('}');
            try {
                out.push(JSON.parse(body.join('\n')));
            } catch {
                // a half-written block: the next poll reads it whole
            }
        }
        i = j;
    }
    return out;
}

/** Run a command from the command palette (F1), as a user does. */
async function paletteCommand(page, label) {
    await page.keyboard.press('F1');
    const input = '.quick-input-widget input';
    await page.waitForSelector(input, { state: 'visible', timeout: 15000 });
    await page.fill(input, '>' + label);
    const row = `.quick-input-list .monaco-list-row[aria-label*="${label}"]`;
    await page.waitForSelector(row, { timeout: 15000 });
    await page.keyboard.press('Enter');
    await page.waitForSelector('.quick-input-widget', { state: 'hidden', timeout: 15000 });
}

/** What the page shows when a step failed: for the report. */
async function diagnose(page) {
    return page.evaluate(() => {
        const text = (sel) => [...document.querySelectorAll(sel)].map((e) => (e.textContent || '').replace(/\u00a0/g, ' '));
        return {
            cursor: text('.statusbar-item[id="status.editor.selection"]').join(''),
            status: [...document.querySelectorAll('.statusbar-item')].map((e) => e.getAttribute('aria-label')).filter(Boolean),
            notifications: text('.notifications-toasts .notification-list-item-message'),
            quickInput: text('.quick-input-widget .quick-input-title, .quick-input-widget .monaco-list-row').slice(0, 5),
            ghost: text('.ghost-text-decoration, .ghost-text-decoration-preview').join(''),
            activeElement: document.activeElement ? document.activeElement.className : '',
        };
    });
}

async function main() {
    const args = parseArgs(process.argv);
    const result = { ok: false, steps: [], timings: {}, notes: [] };
    const mark = (name, extra) => {
        result.timings[name] = Number(secs());
        result.steps.push(name);
        log(`${name}${extra ? ': ' + extra : ''}`);
    };

    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'draftline-vscode-e2e-'));
    const dirs = {
        tmp,
        D: path.join(tmp, 'D'),
        E: path.join(tmp, 'E'),
        W: path.join(tmp, 'W'),
        config: path.join(tmp, 'code-server.yaml'),
        profile: path.join(tmp, 'chromium'),
    };
    const out = args.out || path.join(tmp, 'out');
    fs.mkdirSync(out, { recursive: true });
    fs.mkdirSync(dirs.W, { recursive: true });
    const demoPath = path.join(dirs.W, 'demo.py');
    fs.writeFileSync(demoPath, DEMO);
    fs.writeFileSync(dirs.config, 'bind-addr: 127.0.0.1:0\nauth: none\ncert: false\n');
    const settingsPath = path.join(dirs.D, 'User', 'settings.json');
    writeJson(settingsPath, {
        'draftline.serverPath': args.serverPath,
        'security.workspace.trust.enabled': false,
        'editor.inlineSuggest.enabled': true,
        'editor.inlineSuggest.showToolbar': 'always',
        'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
        'editor.suggestOnTriggerCharacters': false,
        'editor.autoClosingBrackets': 'never',
        'editor.autoClosingQuotes': 'never',
        'editor.minimap.enabled': false,
        'files.autoSave': 'off', // the web default is afterDelay: demo.py on disk changes on Ctrl+S only
        'editor.fontSize': 15,
        'workbench.startupEditor': 'none',
        'workbench.tips.enabled': false,
        'workbench.enableExperiments': false,
        'telemetry.telemetryLevel': 'off',
        'extensions.autoCheckUpdates': false,
        'extensions.autoUpdate': false,
        'extensions.ignoreRecommendations': true,
        'update.mode': 'none',
        'chat.commandCenter.enabled': false,
    });
    result.tmp = tmp;
    result.out = out;

    let cs; // code-server
    let browser;
    let page;
    let deadline;
    const cleanup = () => {
        if (cs && cs.exitCode === null) {
            try {
                process.kill(-cs.pid, 'SIGKILL'); // code-server, its extension host, draftline serve
            } catch {
                // gone
            }
        }
    };
    process.on('exit', cleanup);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
        process.on(sig, () => {
            cleanup();
            process.exit(130);
        });
    }

    try {
        deadline = setTimeout(() => {
            console.log(`e2e: overall timeout (${args.timeoutS} s)`);
            console.log('E2E ' + JSON.stringify({ ...result, error: `overall timeout ${args.timeoutS} s` }));
            cleanup();
            process.exit(3);
        }, args.timeoutS * 1000);

        // --- install the .vsix the way a user does
        check(fs.existsSync(args.vsix), `no .vsix at ${args.vsix} (editors/vscode/build.sh)`);
        const inst = spawnSync(process.execPath, [...codeServerArgs(dirs), '--install-extension', args.vsix],
            { encoding: 'utf8', timeout: 120000 });
        const instOut = `${inst.stdout}\n${inst.stderr}`;
        fs.writeFileSync(path.join(out, 'install.log'), instOut);
        check(inst.status === 0 && /successfully installed/.test(instOut),
            `code-server --install-extension failed (${inst.status}): ${instOut.slice(-800)}`);
        const installed = fs.readdirSync(dirs.E).filter((n) => n.startsWith('draftline.'));
        check(installed.length === 1, `extension not in the extensions dir: ${fs.readdirSync(dirs.E)}`);
        mark('install', installed[0]);

        // --- code-server on a free port
        const csLog = fs.createWriteStream(path.join(out, 'code-server.log'));
        cs = spawn(process.execPath, [...codeServerArgs(dirs), dirs.W], {
            detached: true, // its own process group: the cleanup takes the whole tree
            stdio: ['ignore', 'pipe', 'pipe'],
        });
        let csText = '';
        const onData = (d) => {
            csText += d;
            csLog.write(d);
        };
        cs.stdout.on('data', onData);
        cs.stderr.on('data', onData);
        const url = await waitFor('code-server to listen', () => {
            check(cs.exitCode === null, `code-server exited (${cs.exitCode}): ${csText.slice(-1500)}`);
            const m = /HTTP server listening on (http:\/\/\S+)/.exec(csText);
            return m && m[1];
        }, 60000);
        mark('code-server', url);

        // --- headless chromium
        const { chromium } = require('playwright-core');
        // a fresh profile in the temporary folder (playwright passes it as --user-data-dir);
        // never a downloaded browser: the system chromium
        const context = await chromium.launchPersistentContext(dirs.profile, {
            executablePath: args.chromium,
            headless: true,
            args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync',
                '--disable-dev-shm-usage'],
            viewport: { width: 1100, height: 640 },
            deviceScaleFactor: 1,
        });
        browser = context;
        page = context.pages()[0] || await context.newPage();
        const consoleErrors = [];
        page.on('console', (m) => {
            if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 300));
        });
        await page.goto(`${url}?folder=${encodeURIComponent(dirs.W)}`);
        await page.waitForSelector('.monaco-workbench', { timeout: 60000 });
        mark('workbench');

        // ---------------------------------------------------------------- helpers in the page
        const STATUS_ITEM = '[id="draftline.draftline.draftline.status"]';
        const statusBar = () => page.evaluate((sel) => {
            const el = document.querySelector(sel);
            const prog = [...document.querySelectorAll('.statusbar-item')]
                .map((e) => e.getAttribute('aria-label') || '').filter((l) => /draftline/.test(l) && !/sparkle|sync~spin|debug-disconnect|error|circle-slash/.test(l.split(' ')[0]));
            if (!el) return { present: false, progress: prog };
            const icon = el.querySelector('.codicon');
            return {
                present: true,
                icon: icon ? [...icon.classList].filter((c) => c !== 'codicon').join(' ') : '',
                label: el.getAttribute('aria-label') || '',
                progress: prog,
            };
        }, STATUS_ITEM);

        /** Ghost text in the focused editor: the inline part on the cursor line and any extra lines. */
        const ghost = () => page.evaluate(() => {
            const ed = document.querySelector('.editor-instance .monaco-editor.focused') ||
                document.querySelector('.editor-instance .monaco-editor');
            if (!ed) return { text: '', spans: 0 };
            const spans = [...ed.querySelectorAll('.view-lines .ghost-text-decoration, .view-lines .ghost-text-decoration-preview')];
            const inline = spans.map((s) => s.textContent).join('');
            const extra = [...ed.querySelectorAll('.view-zones .suggest-preview-text .view-line')]
                .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
                .map((l) => l.textContent);
            const text = [inline, ...extra].join('\n').replace(/\u00a0/g, ' ');
            const counter = document.querySelector('.inlineSuggestionsHints .availableSuggestionCount');
            const visible = spans.some((s) => s.getBoundingClientRect().width > 0);
            return { text, spans: spans.length, extraLines: extra.length, visible, counter: counter ? counter.textContent : '' };
        });

        const waitGhost = async (what, pred = (g) => g.text.trim().length > 0, timeoutMs = 45000) =>
            waitFor(what, async () => {
                const g = await ghost();
                return g.visible && pred(g) ? g : undefined;
            }, timeoutMs, 50);

        /**
         * Ghost text after typing. The server sometimes answers with no draft: when its cache
         * already holds the whole prompt (sync "noop": a second request at the same text and
         * cursor, or an earlier job synced it), it decodes differently and can come back empty
         * (seen at `    ret|` in closest(); reported). Asking again at the same place gets the
         * same empty answer, so, as a user would, this types one character more (`more`),
         * once, and notes it in the result.
         */
        const ghostAfterTyping = async (what, more) => {
            try {
                return { g: await waitGhost(what, undefined, 20000), extra: '' };
            } catch (e) {
                result.notes.push(`${what}: no draft in 20 s, typed ${JSON.stringify(more)} more`);
                log(`${what}: no draft in 20 s; typing ${JSON.stringify(more)} more`);
                await typeChars(more);
                return { g: await waitGhost(`${what} (after typing ${JSON.stringify(more)} more)`, undefined, 30000), extra: more };
            }
        };

        /** Line n of the focused editor as drawn, without ghost text (null: not on screen). */
        const editorLine = (n) => page.evaluate((n) => {
            const ed = document.querySelector('.editor-instance .monaco-editor.focused') ||
                document.querySelector('.editor-instance .monaco-editor');
            if (!ed) return null;
            const num = [...ed.querySelectorAll('.margin-view-overlays .line-numbers')]
                .find((e) => e.textContent.trim() === String(n));
            if (!num) return null;
            const top = num.parentElement.style.top;
            const line = [...ed.querySelectorAll('.view-lines .view-line')].find((l) => l.style.top === top);
            if (!line) return null;
            const c = line.cloneNode(true);
            c.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview').forEach((e) => e.remove());
            return c.textContent.replace(/\u00a0/g, ' ');
        }, n);

        /** The ghost text once two reads 300 ms apart agree (nothing is being redrawn). */
        const steadyGhost = async () => {
            let prev = await ghost();
            return waitFor('the ghost text to hold still', async () => {
                await new Promise((r) => setTimeout(r, 300));
                const g = await ghost();
                const same = g.visible && g.text === prev.text && g.counter === prev.counter;
                prev = g;
                return same ? g : undefined;
            }, 10000, 0);
        };

        const shot = async (name) => {
            try {
                await page.screenshot({ path: path.join(out, name) });
            } catch {
                // the page is gone
            }
        };

        const palette = (label) => paletteCommand(page, label);

        const gotoLineEnd = async (n) => {
            await page.keyboard.press('Control+g');
            const input = '.quick-input-widget input';
            await page.waitForSelector(input, { state: 'visible', timeout: 15000 });
            await page.fill(input, `:${n}`);
            await page.keyboard.press('Enter');
            await page.waitForSelector('.quick-input-widget', { state: 'hidden', timeout: 15000 });
            await page.keyboard.press('End');
            await waitFor(`cursor on line ${n}`, async () => {
                const t = await page.textContent('.statusbar-item[id="status.editor.selection"]');
                return t && t.includes(`Ln ${n},`);
            }, 10000);
        };

        /**
         * Ctrl+S until demo.py on disk is no longer `prev` (a clean editor saves nothing), then
         * until two reads 200 ms apart agree (a read can land in the middle of the write).
         */
        const save = async (prev) => {
            await waitFor('demo.py saved with the edit', async () => {
                await page.keyboard.press('Control+s');
                return waitFor('the write', () => fs.readFileSync(demoPath, 'utf8') !== prev, 2000, 50).catch(() => false);
            }, 15000, 0);
            let last = fs.readFileSync(demoPath, 'utf8');
            return waitFor('demo.py to be written out', async () => {
                await new Promise((r) => setTimeout(r, 200));
                const now = fs.readFileSync(demoPath, 'utf8');
                const same = now === last;
                last = now;
                return same ? now : undefined;
            }, 10000, 0);
        };

        const lineOf = (text, n) => text.split('\n')[n - 1];

        const typeChars = (s) => page.keyboard.type(s, { delay: 60 });

        // ---------------------------------------------------------------- open the file
        const row = '.explorer-folders-view .monaco-list-row[aria-label="demo.py"]';
        await page.waitForSelector(row, { timeout: 30000 });
        await page.click(row);
        await page.waitForSelector('.tab[aria-label^="demo.py"]', { timeout: 30000 });
        await waitFor('demo.py in the editor', async () =>
            (await page.textContent('.editor-instance .monaco-editor .view-lines')).replace(/\u00a0/g, ' ').includes('def midpoint'),
            30000);
        mark('open', 'demo.py');

        // ---------------------------------------------------------------- model loading ends
        const seen = new Set();
        const ready = await waitFor('the draftline status bar item to show the server ready', async () => {
            const s = await statusBar();
            if (s.present) seen.add(s.icon.split(' ')[0] + (/loading the model/.test(s.label) ? ':loading' : ''));
            if (s.progress.length) seen.add('progress:' + s.progress[0]);
            return s.present && s.icon === 'codicon-sparkle' && s.progress.length === 0 ? s : undefined;
        }, 180000, 100);
        result.statusSeen = [...seen];
        result.statusReady = ready.label;
        check(/model: \w+/.test(ready.label), `status tooltip without the model: ${ready.label}`);
        mark('model-ready', `status bar seen: ${[...seen].join(' | ')}`);

        // ---------------------------------------------------------------- ghost text
        await page.click('.editor-instance .monaco-editor .view-lines');
        await gotoLineEnd(MIDPOINT_LINE);
        let typed = '(p[0]';
        await typeChars(typed);
        const first = await ghostAfterTyping('ghost text after typing in midpoint()', ' ');
        const g1 = first.g;
        typed += first.extra;
        result.ghost1 = g1;
        mark('ghost', JSON.stringify(g1.text));
        await shot('ghost.png');

        // ---------------------------------------------------------------- cycle drafts
        /**
         * Alt+]: VS Code asks the provider again (explicitly) and shows "i/N" in the hint
         * toolbar; the counter and the text are redrawn separately: the counter first, then a
         * steady screen. With N >= 2 the text must change. How many distinct drafts there are
         * is the server's business (VS Code also drops duplicates): with one, there is nothing
         * to cycle here, and the next ghost text gets the Alt+] (result.cycle says where).
         */
        const tryCycle = async (before, where) => {
            await page.keyboard.press('Alt+BracketRight');
            await waitGhost(`the draft counter after Alt+] in ${where}`, (g) => /^\d+\/\d+$/.test(g.counter), 30000);
            let g = await steadyGhost();
            const n = Number(g.counter.split('/')[1]);
            if (n >= 2 && !result.cycle) {
                if (g.text === before.text) {
                    await waitGhost(`another draft after Alt+] in ${where}`, (x) => x.text.trim().length > 0 && x.text !== before.text, 10000);
                    g = await steadyGhost();
                }
                check(g.text !== before.text, `Alt+] did not move to another draft in ${where} (${g.counter})`);
                result.cycle = { where, before: before.text, after: g.text, counter: g.counter };
                mark('cycle', `${where}: ${JSON.stringify(before.text)} -> ${g.counter} ${JSON.stringify(g.text)}`);
            } else if (!result.cycle) {
                result.notes.push(`Alt+] in ${where}: one draft (${g.counter}), nothing to cycle`);
            }
            return { g, n };
        };
        result.cycle = null;
        const g2 = (await tryCycle(g1, 'midpoint()')).g;
        result.ghost2 = g2;
        if (args.screenshot) { // the README's picture: a draft as ghost text, the toolbar's i/N
            await page.screenshot({ path: args.screenshot });
            log(`screenshot: ${args.screenshot}`);
        }
        await shot('ghost-cycled.png');

        // ---------------------------------------------------------------- accept with Tab
        const expected = ('    return ' + typed + g2.text).split('\n');
        await page.keyboard.press('Tab');
        await waitFor(`line ${MIDPOINT_LINE} holding the accepted draft`, async () =>
            (await editorLine(MIDPOINT_LINE)) === expected[0], 10000, 50).catch(async (e) => {
            throw new CheckError(`${e.message}: it is ${JSON.stringify(await editorLine(MIDPOINT_LINE))}, ` +
                `expected ${JSON.stringify(expected[0])}`);
        });
        await page.keyboard.press('Escape'); // a follow-up suggestion must not sit in the way
        const afterTab = await save(DEMO);
        const gotLines = afterTab.split('\n').slice(MIDPOINT_LINE - 1, MIDPOINT_LINE - 1 + expected.length);
        // VS Code may re-indent the extra lines of a multi-line draft: compare them trimmed
        check(gotLines[0] === expected[0], `after Tab and Ctrl+S line ${MIDPOINT_LINE} of demo.py is ` +
            `${JSON.stringify(gotLines[0])}, expected ${JSON.stringify(expected[0])}`);
        for (let i = 1; i < expected.length; i++) {
            check(gotLines[i].trim() === expected[i].trim(),
                `after Tab line ${MIDPOINT_LINE + i} is ${JSON.stringify(gotLines[i])}, expected ${JSON.stringify(expected[i])}`);
        }
        result.accepted = gotLines.join('\n');
        mark('accept', JSON.stringify(result.accepted));

        // ---------------------------------------------------------------- type over, accept a word
        const lastLine = CLOSEST_LINE + expected.length - 1;
        await gotoLineEnd(lastLine);
        await typeChars('ret');
        let g3 = (await ghostAfterTyping('ghost text after typing in closest()', 'u')).g;
        if (!result.cycle) g3 = (await tryCycle(g3, 'closest()')).g;
        // type the character the ghost text continues with: the suggestion follows the typing
        const next = g3.text[0];
        await page.keyboard.type(next);
        const g4 = await waitGhost(`ghost text after typing ${JSON.stringify(next)} (its own next character)`,
            (g) => g.text.trim().length > 0 && g.text !== g3.text, 30000);
        result.typeAlong = { before: g3.text, typed: next, after: g4.text, kept: g4.text === g3.text.slice(1) };
        mark('type-along', `${JSON.stringify(g3.text)} + ${JSON.stringify(next)} -> ${JSON.stringify(g4.text)}`);

        const savedBeforeWord = await save(afterTab);
        const beforeWord = lineOf(savedBeforeWord, lastLine);
        const g4b = await waitGhost('ghost text still there after saving', () => true, 5000).catch(() => undefined);
        if (!g4b) {
            result.notes.push('saving dismissed the ghost text: asked again (Trigger Inline Suggestion)');
            await palette('Trigger Inline Suggestion');
        }
        const g5 = g4b || await waitGhost('ghost text before Ctrl+Right');
        await page.keyboard.press('Control+ArrowRight');
        // the extension's command runs in the extension host: wait for the edit on screen
        await waitFor(`line ${lastLine} to grow after Ctrl+Right`, async () => {
            const l = await editorLine(lastLine);
            return l !== null && l !== beforeWord;
        }, 15000, 50).catch(async (e) => {
            throw new CheckError(`${e.message}: it is ${JSON.stringify(await editorLine(lastLine))}`);
        });
        const savedAfterWord = await save(savedBeforeWord);
        const afterWord = lineOf(savedAfterWord, lastLine);
        if (afterWord === beforeWord) { // what else changed on disk
            const a = savedBeforeWord.split('\n');
            const b = savedAfterWord.split('\n');
            const diff = b.map((l, i) => (l !== a[i] ? `${i + 1}: ${JSON.stringify(a[i])} -> ${JSON.stringify(l)}` : ''))
                .filter(Boolean).concat(a.length !== b.length ? [`${a.length} -> ${b.length} lines`] : []);
            throw new CheckError(`Ctrl+Right: line ${lastLine} on disk unchanged (${JSON.stringify(afterWord)}), ` +
                `on screen ${JSON.stringify(await editorLine(lastLine))}; changed on disk: ${diff.join('; ')}`);
        }
        const word = afterWord.slice(beforeWord.length);
        check(afterWord.startsWith(beforeWord) && word.length > 0 && g5.text.startsWith(word),
            `Ctrl+Right: ${JSON.stringify(beforeWord)} -> ${JSON.stringify(afterWord)}, ghost was ${JSON.stringify(g5.text)}`);
        const rest = g5.text.slice(word.length);
        // one word, not the draft: whatever follows the first word (after its spaces) is left
        check(!/\S\s+\S/.test(g5.text.slice(0, word.length).trim()), `Ctrl+Right took more than a word: ${JSON.stringify(word)}`);
        check(!/^\s*\S+\s+\S/.test(g5.text) || rest.trim().length > 0,
            `Ctrl+Right took the whole draft ${JSON.stringify(g5.text)} at once`);
        result.acceptWord = { ghost: g5.text, word, line: afterWord, rest };
        mark('accept-word', `${JSON.stringify(word)} of ${JSON.stringify(g5.text)}`);

        // what is left on screen: the rest of the draft, or a new one for the new text
        const g6 = await waitGhost('ghost text after Ctrl+Right', undefined, 15000).catch(() => undefined);
        if (rest.trim() && !g6) {
            throw new CheckError(`after Ctrl+Right the rest of the draft (${JSON.stringify(rest)}) is not shown`);
        }
        result.acceptWord.after = g6 ? g6.text : null;

        // a character the ghost text does not continue with: it updates or vanishes
        const typeOver = async (before) => {
            const other = before.text.startsWith('#') ? '@' : '#';
            await page.keyboard.type(other);
            const g7 = await waitFor(`ghost text to update or vanish after typing ${JSON.stringify(other)}`, async () => {
                const g = await ghost();
                return !g.visible || (g.text !== before.text) ? g : undefined;
            }, 15000, 50);
            result.typeOver = { before: before.text, typed: other, after: g7.visible ? g7.text : null };
            mark('type-over', `${JSON.stringify(before.text)} + ${JSON.stringify(other)} -> ` +
                `${g7.visible ? JSON.stringify(g7.text) : '(vanished)'}`);
            await page.keyboard.press('Escape');
            await page.keyboard.press('Backspace');
        };
        if (g6) {
            await typeOver(g6);
        } else {
            result.notes.push('no ghost text after Ctrl+Right took the whole (one-word) draft: typing over it later');
        }

        // ---------------------------------------------------------------- settings editor: drafts = 2
        await palette('Preferences: Open User Settings');
        const search = '.settings-editor .settings-header .suggest-input-container .monaco-editor textarea';
        await page.waitForSelector(search, { timeout: 20000 });
        await page.click('.settings-editor .settings-header .suggest-input-container');
        await page.keyboard.type('draftline.drafts');
        const num = '.settings-editor .setting-item-number input';
        await waitFor('the draftline.drafts setting in the settings editor', async () => {
            const items = await page.$$eval('.settings-editor .setting-item-number', (els) =>
                els.map((e) => (e.querySelector('.setting-item-label') || {}).textContent || ''));
            return items.length === 1 && /Drafts/.test(items[0]);
        }, 20000);
        await page.click(num, { clickCount: 3 });
        await page.keyboard.type('2');
        await waitFor('draftline.drafts = 2 in settings.json', () => {
            try {
                return JSON.parse(fs.readFileSync(settingsPath, 'utf8'))['draftline.drafts'] === 2;
            } catch {
                return false; // being written
            }
        }, 20000, 100);
        await shot('settings.png');
        mark('settings', 'draftline.drafts = 2 written by the settings editor');

        const logPath = () => channelLog(dirs.D);
        const showStatus = async (what, pred) => {
            const before = logPath() ? statusDumps(fs.readFileSync(logPath(), 'utf8')).length : 0;
            await palette('draftline: Show Status');
            return waitFor(what, () => {
                const p = logPath();
                if (!p) return undefined;
                const dumps = statusDumps(fs.readFileSync(p, 'utf8'));
                const last = dumps.length > before ? dumps[dumps.length - 1] : undefined;
                return last && pred(last) ? last : undefined;
            }, 20000, 200).catch(async (e) => {
                // the poll may have run before the server saw the change: once more
                await palette('draftline: Show Status');
                const dumps = statusDumps(fs.readFileSync(logPath(), 'utf8'));
                const last = dumps[dumps.length - 1];
                if (last && pred(last)) return last;
                throw new CheckError(`${e.message}; last status: ${JSON.stringify(last)}`);
            });
        };
        const st1 = await showStatus('draftline/status with settings.drafts == 2 in the output channel',
            (s) => s.settings && s.settings.drafts === 2);
        result.status1 = { pid: st1.pid, settings: st1.settings, counters: st1.counters, model: st1.model };
        const c1 = st1.counters || {};
        check(c1.requests >= 3, `counters.requests ${c1.requests}`);
        check(c1.shown >= 2, `counters.shown ${c1.shown}`);
        check(c1.accepted >= 1, `counters.accepted ${c1.accepted} after Tab`);
        if (result.acceptWord.rest) {
            check(c1.partially_accepted >= 1, `counters.partially_accepted ${c1.partially_accepted} after Ctrl+Right`);
        } else { // the word was the whole draft: VS Code accepts it (the item's command runs)
            check(c1.accepted >= 2, `counters.accepted ${c1.accepted} after Tab and a Ctrl+Right that took the whole draft`);
        }
        await waitFor('the output panel showing the draftline channel', async () =>
            page.evaluate(() => {
                const p = document.querySelector('.part.panel');
                return !!p && p.getBoundingClientRect().height > 0 && !!p.querySelector('.output-view, [id="workbench.panel.output"]');
            }), 10000);
        mark('show-status', `pid ${st1.pid}, settings.drafts ${st1.settings.drafts}, counters ${JSON.stringify(c1)}`);

        // ---------------------------------------------------------------- restart the server
        await palette('draftline: Restart Server');
        const seen2 = new Set();
        await waitFor('the status bar item to show the restarted server ready', async () => {
            const s = await statusBar();
            if (s.present) seen2.add(s.icon.split(' ')[0]);
            const p = logPath();
            const loads = p ? (fs.readFileSync(p, 'utf8').match(/\[info\] draftline: model ready/g) || []).length : 0;
            return s.present && s.icon === 'codicon-sparkle' && loads >= 2;
        }, 180000, 100);
        const st2 = await showStatus('draftline/status from the restarted server', (s) => s.pid !== st1.pid && !!s.model);
        check(st2.settings.drafts === 2, `restarted server has drafts ${st2.settings.drafts}`);
        result.status2 = { pid: st2.pid, settings: st2.settings, counters: st2.counters };
        mark('restart', `pid ${st1.pid} -> ${st2.pid}, status bar seen: ${[...seen2].join(' | ')}`);

        // ghost text from the new server, at most 2 drafts now: back to demo.py's tab
        await page.click('.tab[aria-label^="demo.py"]');
        await waitFor('demo.py focused again', async () =>
            page.evaluate(() => !!document.querySelector('.editor-instance .monaco-editor.focused')), 10000);
        await gotoLineEnd(lastLine);
        await page.keyboard.press('End');
        await typeChars('re');
        const g8 = (await ghostAfterTyping('ghost text from the restarted server', 't')).g;
        const { g: g9, n: total2 } = await tryCycle(g8, 'closest() after the restart'); // all drafts: at most 2 now
        check(total2 >= 1 && total2 <= 2, `with draftline.drafts = 2 the hint shows ${g9.counter}`);
        result.afterRestart = { ghost: g8.text, counter: g9.counter };
        mark('ghost-after-restart', `${JSON.stringify(g8.text)}, drafts ${g9.counter}`);
        if (!result.typeOver) await typeOver(g9);

        // ---------------------------------------------------------------- the output channel log
        const chan = fs.readFileSync(logPath(), 'utf8');
        fs.writeFileSync(path.join(out, 'draftline-channel.log'), chan);
        const loads = (chan.match(/\[info\] draftline: model ready/g) || []).length;
        check(loads === 2, `model loads in the channel: ${loads} (expected 2: start and restart)`);
        check(!/unrecognized arguments|Traceback \(most recent call last\)/.test(chan),
            'the channel log has an argument error or a traceback');
        // the server's own log lines keep their level (not all "[error]" as stderr)
        const errors = chan.split('\n').filter((l) => /^\S+ \S+ \[error\]/.test(l));
        result.channelErrors = errors.slice(0, 10);
        if (!/^debug$/i.test(process.env.DRAFTLINE_LOG || '')) { // DEBUG adds raw lines from helpers
            check(errors.length === 0, `error lines in the channel: ${errors.slice(0, 5).join(' | ')}`);
        }
        check(/\[info\] draftline\.lsp\.server: /.test(chan), 'no server log line at [info] in the channel');
        result.channelLog = path.relative(dirs.D, logPath());
        result.channelLines = chan.split('\n').length;
        result.consoleErrors = consoleErrors.slice(0, 20);
        mark('logs', `${result.channelLog}: ${result.channelLines} lines, ${loads} model loads`);
        result.ok = true;
    } catch (e) {
        result.error = e instanceof CheckError ? e.message : String(e && e.stack || e);
        log(`FAILED: ${result.error}`);
        if (page) {
            await page.screenshot({ path: path.join(out, 'failure.png') }).catch(() => undefined);
            result.failureState = await diagnose(page).catch((err) => String(err));
            if (result.steps.includes('model-ready') && channelLog(dirs.D)) {
                // the server's view: its counters and settings when the step failed
                await page.keyboard.press('Escape');
                await paletteCommand(page, 'draftline: Show Status').catch(() => undefined);
                await new Promise((r) => setTimeout(r, 1500));
                const dumps = statusDumps(fs.readFileSync(channelLog(dirs.D), 'utf8'));
                const last = dumps[dumps.length - 1];
                if (last) result.failureStatus = { pid: last.pid, counters: last.counters, settings: last.settings, caches: last.caches };
            }
        }
    } finally {
        clearTimeout(deadline);
        const p = channelLog(dirs.D);
        if (p) fs.copyFileSync(p, path.join(out, 'draftline-channel.log'));
        const exthost = p && path.join(path.dirname(path.dirname(p)), 'remoteexthost.log');
        if (exthost && fs.existsSync(exthost)) fs.copyFileSync(exthost, path.join(out, 'exthost.log'));
        if (browser) await browser.close().catch(() => undefined);
        if (cs && cs.exitCode === null) {
            process.kill(-cs.pid, 'SIGTERM');
            const gone = await waitFor('code-server to exit', () => cs.exitCode !== null || cs.signalCode !== null, 10000)
                .catch(() => false);
            if (!gone) cleanup();
        }
        result.seconds = Number(secs());
        // the temporary folder goes unless --keep, or a failure without --out (to look into)
        if (!args.keep && (result.ok || args.out)) fs.rmSync(tmp, { recursive: true, force: true });
        else result.kept = tmp;
        console.log('E2E ' + JSON.stringify(result));
    }
    process.exit(result.ok ? 0 : 1);
}

main().catch((e) => {
    console.log('E2E ' + JSON.stringify({ ok: false, error: String(e && e.stack || e) }));
    process.exit(2);
});
