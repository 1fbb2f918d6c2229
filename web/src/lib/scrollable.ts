/** `use:scrollable` on a box that may scroll sideways (a wide table): while its content overflows it
 * is in the Tab order, so keyboard users can scroll it (axe: scrollable-region-focusable). */
export function scrollable(node: HTMLElement): { destroy(): void } {
	const update = () => {
		if (node.scrollWidth > node.clientWidth + 1) node.tabIndex = 0;
		else node.removeAttribute('tabindex');
	};
	const observer = new ResizeObserver(update);
	observer.observe(node);
	for (const child of node.children) observer.observe(child);
	const children = new MutationObserver(() => {
		for (const child of node.children) observer.observe(child);
		update();
	});
	children.observe(node, { childList: true });
	update();
	return {
		destroy() {
			observer.disconnect();
			children.disconnect();
		}
	};
}
