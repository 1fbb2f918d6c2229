/** Call `tick` now and then every `everyMs` (its current value) while the page is visible; returns the
 * stopper, for $effect's teardown. A tick never overlaps the previous one. */
export function poll(tick: () => Promise<unknown>, everyMs: () => number): () => void {
	let timer: ReturnType<typeof setTimeout> | undefined;
	let stopped = false;
	const run = async () => {
		if (stopped) return;
		if (document.visibilityState === 'visible') {
			try {
				await tick();
			} catch {
				// the tick reports its own errors; polling goes on
			}
		}
		if (!stopped) timer = setTimeout(run, everyMs());
	};
	const wake = () => {
		if (document.visibilityState === 'visible') {
			clearTimeout(timer);
			run();
		}
	};
	document.addEventListener('visibilitychange', wake);
	run();
	return () => {
		stopped = true;
		clearTimeout(timer);
		document.removeEventListener('visibilitychange', wake);
	};
}
