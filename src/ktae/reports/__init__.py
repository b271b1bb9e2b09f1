"""Reports people can look at: key-token HTML reports and training curves.

``ktae.reports.curves.plot_runs`` draws training curves (PNG); the HTML report builders are
imported lazily so that importing this package stays cheap.
"""
